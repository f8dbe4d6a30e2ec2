//! One client WebSocket: a reader loop that decodes frames and feeds the room, and a writer task
//! that drains a bounded queue into the socket.
//!
//! The two halves only meet through [`Control`]: whoever decides the connection must end (the
//! reader on a bad frame, the room on a full queue, the server on shutdown, the writer on a dead
//! socket) records a close code and cancels the token; the writer sends that close frame.
//!
//! When the reader stops because the WebSocket framing itself failed (a message over the size
//! limit, a malformed frame), the client may still be sending: after the close frame, the rest
//! is read and discarded below the framing ([`crate::linger`]), so the close code reaches it.
//!
//! The reader also enforces the connection's [`Grant`]: a read-only client's updates are
//! dropped here, before the room sees them (so they are never applied, stored or relayed), and
//! a connection whose token expires is closed with 1008 at its `exp`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use axum::extract::ws::close_code;
use bytes::Bytes;
use concord_crdt::{ClientMessage, DecodeError, DocName, decode_frame, encode};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tracing::{Instrument, debug, info, warn};

use crate::app::App;
use crate::auth::{Access, Grant};
use crate::control::Control;
use crate::fragment;
use crate::handles::{ClientHandle, ConnId, JoinError, RoomMsg};
use crate::limits::DocSlot;
use crate::linger::{self, DRAIN_MAX_BYTES};
use crate::metrics::{Metrics, Source, Verdict};
use crate::upgrade::ClientSocket;

/// Serves one upgraded socket until it closes. `slot`: the document's place under
/// `--max-live-docs`, reserved before the upgrade when it was not live.
pub async fn serve(
    socket: ClientSocket,
    doc: DocName,
    peer: SocketAddr,
    grant: Grant,
    slot: Option<DocSlot>,
    app: Arc<App>,
) {
    let id = app.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let _open = crate::metrics::GaugeHeld::new(&app.metrics.connections_open);
    let control = Arc::new(Control::new(app.shutdown.child_token()));
    let (out_tx, out_rx) = mpsc::channel(app.config.send_queue);
    let (sink, mut stream) = socket.split();
    let writer = tokio::spawn(
        write_loop(
            sink,
            out_rx,
            control.clone(),
            app.config.ping_interval,
            app.metrics.clone(),
        )
        .in_current_span(),
    );
    control.seen();
    debug!(%doc, %peer, id, "connected");

    let client = ClientHandle {
        id,
        peer,
        read_only: grant.access < Access::Write,
        out: out_tx,
        control: control.clone(),
    };
    // Held until the writer is done: the writer must end through `control` (which carries the
    // close code), never because the room or a failed join dropped the last sender first.
    let _keep_queue_open = client.clone();
    let mut framing_failed = false;
    match app.registry.join_with(&doc, client, slot).await {
        Ok(room) => {
            let reader = Reader {
                doc: &doc,
                peer,
                id,
                room: &room,
                control: &control,
                grant: &grant,
                out: &_keep_queue_open,
                metrics: &app.metrics,
            };
            framing_failed = reader.run(&mut stream).await == ReadEnd::FramingFailed;
            // Tell the room even when the reader ended because the room is gone: harmless.
            let _ = room.send(RoomMsg::Leave { id }).await;
        }
        Err(JoinError::Load(reason)) => {
            warn!(%doc, %peer, %reason, "document could not be loaded; closing the connection");
            control.close(
                close_code::ERROR,
                format!("document could not be loaded: {reason}"),
            );
        }
        Err(JoinError::Unavailable) => {
            control.close(close_code::AWAY, "server is shutting down");
        }
    }
    control.token().cancel();
    let (close_sent, sink) = match writer.await {
        Ok((sent, sink)) => (sent, Some(sink)),
        Err(_) => (false, None),
    };
    // The close frame is out. Read until the client answers it, so the socket is not torn down
    // with unread data (the kernel would then reset it and the client would lose the close code).
    // A client that could not even take the close frame is let go at once.
    match sink {
        Some(sink) if close_sent && framing_failed => {
            // The framing gave up (it ends the stream at its first error), so the bytes still
            // arriving, most often the rest of an oversized message, are read raw.
            if let Ok(socket) = stream.reunite(sink) {
                let (ended, bytes) =
                    linger::discard(&mut socket.into_inner(), DRAIN_MAX_BYTES, CLOSE_LINGER).await;
                debug!(%doc, %peer, id, ?ended, bytes, "discarded what arrived after the close frame");
            }
        }
        Some(_) if close_sent => {
            let _ = tokio::time::timeout(CLOSE_LINGER, async {
                while let Some(Ok(_)) = stream.next().await {}
            })
            .await;
        }
        _ => {}
    }
    // The code of the close frame: the one recorded, or 1001 when the server stopped without
    // recording one; none when the connection was lost or found dead.
    let code = control
        .reason()
        .map(|(code, _)| code)
        .or_else(|| app.shutdown.is_cancelled().then_some(close_code::AWAY));
    app.metrics.connection_closed(code);
    debug!(%doc, %peer, id, "disconnected");
}

/// How long a closing connection waits for the client's close reply, or, when its framing
/// failed, keeps discarding what the client still sends ([`linger`]): the most a refused client
/// holds its connection slot after the close frame went out.
pub const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// The reading half of one connection, and what it needs to know.
struct Reader<'a> {
    doc: &'a DocName,
    peer: SocketAddr,
    id: ConnId,
    room: &'a mpsc::Sender<RoomMsg>,
    control: &'a Control,
    grant: &'a Grant,
    /// The connection's own queue, for the permission-denied message.
    out: &'a ClientHandle,
    /// Where refused updates are counted.
    metrics: &'a Metrics,
}

/// Why the reader stopped.
#[derive(PartialEq, Eq)]
enum ReadEnd {
    /// The connection is ending for another reason; the WebSocket stream still works.
    Other,
    /// The WebSocket stream failed (oversized or malformed frame, socket error) and yields
    /// nothing more.
    FramingFailed,
}

impl Reader<'_> {
    async fn run(&self, stream: &mut SplitStream<ClientSocket>) -> ReadEnd {
        let (doc, peer, control) = (self.doc, self.peer, self.control);
        // One waiter for the whole connection, not one registered per frame.
        let cancelled = control.token().cancelled();
        tokio::pin!(cancelled);
        let expiry = sleep_until_expiry(self.grant.expires);
        tokio::pin!(expiry);
        let mut denied_once = false;
        loop {
            let msg = tokio::select! {
                _ = &mut cancelled => return ReadEnd::Other,
                _ = &mut expiry => {
                    info!(%doc, %peer, sub = self.grant.sub.as_deref().unwrap_or(""), "token expired; closing with 1008");
                    control.close(close_code::POLICY, "token expired");
                    return ReadEnd::Other;
                }
                msg = stream.next() => msg,
            };
            control.seen();
            let frame = match msg {
                None => return ReadEnd::Other,
                Some(Ok(Message::Close(frame))) => {
                    // Answer with the client's own code (RFC 6455 §5.5.1), so a normal close is
                    // seen as one: the writer sends it as the closing frame.
                    let code = frame.map_or(close_code::NORMAL, |f| f.code.into());
                    control.close(code, "");
                    return ReadEnd::Other;
                }
                Some(Ok(Message::Binary(frame))) => frame,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Text(_))) => {
                    warn!(%doc, %peer, "text frame refused; closing with 1003");
                    control.close(
                        close_code::UNSUPPORTED,
                        "text frames are not part of the y-websocket protocol",
                    );
                    return ReadEnd::Other;
                }
                Some(Err(e)) => {
                    let Some((code, why)) = refused_frame(&e) else {
                        // The client went away without a close frame (a closed tab, a lost
                        // network) or the socket failed: an ordinary disconnect.
                        debug!(%doc, %peer, error = %e, "connection lost");
                        return ReadEnd::Other;
                    };
                    if code == close_code::SIZE {
                        warn!(%doc, %peer, limit = %why, "message over the size limit; closing with 1009");
                    } else {
                        warn!(%doc, %peer, error = %why, code, "malformed WebSocket frame; closing the connection");
                    }
                    control.close(code, why);
                    return ReadEnd::FramingFailed;
                }
            };
            let mut msgs = match decode_frame(&frame) {
                Ok(msgs) => msgs,
                Err(e) => {
                    if matches!(e, DecodeError::InvalidUpdate(_)) {
                        self.metrics.updates(Source::Client, Verdict::Refused, 1);
                    }
                    warn!(%doc, %peer, error = %e, code = e.close_code(), "malformed frame; closing the connection");
                    control.close(e.close_code(), e.to_string());
                    return ReadEnd::Other;
                }
            };
            if self.grant.access < Access::Write {
                let dropped = drop_writes(&mut msgs);
                self.metrics
                    .updates(Source::Client, Verdict::Refused, dropped);
                if dropped > 0 && !denied_once {
                    denied_once = true;
                    self.deny_write();
                }
            }
            if msgs.is_empty() {
                continue;
            }
            if self
                .room
                .send(RoomMsg::Frame { id: self.id, msgs })
                .await
                .is_err()
            {
                return ReadEnd::Other;
            }
        }
    }

    /// Tells a read-only client, once, that its edits go nowhere: y-websocket logs the
    /// y-protocols permission-denied message with its reason.
    fn deny_write(&self) {
        info!(
            doc = %self.doc,
            peer = %self.peer,
            sub = self.grant.sub.as_deref().unwrap_or(""),
            "read-only client sent an update; dropped (logged once per connection)"
        );
        let frame = encode::permission_denied(
            "read-only access: your updates are not applied, stored or relayed",
        );
        // A full queue means the room is about to drop this client anyway.
        let _ = self.out.try_send(Bytes::from(frame));
    }
}

/// Removes the update messages of a read-only client's frame. Returns how many of them
/// carried an edit (an empty Step2, which every client sends in answer to the server's Step1,
/// is not one).
fn drop_writes(msgs: &mut Vec<ClientMessage>) -> u64 {
    let mut wrote = 0;
    msgs.retain(|m| match m {
        ClientMessage::SyncStep2(u) | ClientMessage::Update(u) => {
            wrote += u64::from(!u.decoded.is_empty());
            false
        }
        _ => true,
    });
    wrote
}

/// Completes when a token that expires at `at` has expired; never without one.
async fn sleep_until_expiry(at: Option<SystemTime>) {
    match at {
        Some(at) => {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(left).await
        }
        None => std::future::pending().await,
    }
}

/// The close code and reason for a read the WebSocket layer refused because of what the client
/// sent: a message over the size limit (1009), a frame RFC 6455 forbids (1002), a text frame
/// that is not UTF-8 (1007). `None` for a connection that ended or failed (a reset, an I/O
/// error), which no close frame can reach and which is not the client's fault.
fn refused_frame(e: &tokio_tungstenite::tungstenite::Error) -> Option<(u16, String)> {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error, ProtocolError as P};
    match e {
        Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => Some((
            close_code::SIZE,
            format!("message of {size} bytes exceeds the limit of {max_size} bytes"),
        )),
        Error::Protocol(
            p @ (P::NonZeroReservedBits
            | P::UnmaskedFrameFromClient
            | P::FragmentedControlFrame
            | P::ControlFrameTooBig
            | P::UnknownControlFrameType(_)
            | P::UnknownDataFrameType(_)
            | P::UnexpectedContinueFrame
            | P::ExpectedFragment(_)
            | P::InvalidOpcode(_)
            | P::InvalidCloseSequence),
        ) => Some((close_code::PROTOCOL, p.to_string())),
        Error::Utf8(_) => Some((close_code::INVALID, "text frame is not valid UTF-8".into())),
        _ => None,
    }
}

/// Most frames written before one flush: batches a burst into few syscalls without letting one
/// busy connection monopolise its worker.
const WRITE_BATCH: usize = 64;

/// Sends the close frame `control` recorded (1001 if none: the server is stopping). Returns
/// whether it went out.
async fn send_close(sink: &mut SplitSink<ClientSocket, Message>, control: &Control) -> bool {
    let (code, reason) = control
        .reason()
        .unwrap_or((close_code::AWAY, "server is shutting down".into()));
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    // A dead or slow peer may never take the close frame; do not wait on it long.
    let sent = tokio::time::timeout(CLOSE_SEND, async {
        match sink.send(Message::Close(Some(frame))).await {
            Ok(()) => true,
            // The client closed first: tungstenite refuses a close frame of ours, having queued
            // its echo of the client's own; a flush sends that echo.
            Err(_) => sink.flush().await.is_ok(),
        }
    })
    .await;
    matches!(sent, Ok(true))
}

/// How long a close frame may take to leave: a client that stopped reading never takes it.
const CLOSE_SEND: Duration = Duration::from_secs(2);

/// Queues one binary message, in fragments if it is large ([`fragment`]). After a message of
/// [`LARGE_MESSAGE`] or more, the memory its writing churned through is given back.
async fn feed(
    sink: &mut SplitSink<ClientSocket, Message>,
    frame: Bytes,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let large = frame.len() >= LARGE_MESSAGE;
    for msg in fragment::binary(frame) {
        sink.feed(msg).await?;
    }
    if large {
        crate::memory::freed_a_lot();
    }
    Ok(())
}

/// A message to a client this large (a large document's Step2) is followed by a memory
/// collection (debounced: at most one a second, however many clients join).
const LARGE_MESSAGE: usize = 1 << 20;

/// Returns whether the close frame went out, and the sink (to put the socket back together for
/// a lingering close).
async fn write_loop(
    mut sink: SplitSink<ClientSocket, Message>,
    mut rx: mpsc::Receiver<Bytes>,
    control: Arc<Control>,
    ping_interval: Duration,
    metrics: Arc<Metrics>,
) -> (bool, SplitSink<ClientSocket, Message>) {
    let half = ping_interval / 2;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent_data = false;
    let mut ticks: u64 = 0;
    let token = control.token().clone();
    let cancelled = token.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            _ = &mut cancelled => return (send_close(&mut sink, &control).await, sink),
            frame = rx.recv() => {
                let Some(frame) = frame else { return (false, sink) };
                let mut frame = Some(frame);
                // A client that stopped reading blocks the write once the kernel buffer is full.
                // Race it against the end of the connection, so a dropped client (room queue
                // full, shutdown, dead) is let go at once instead of when TCP gives up.
                // Counted once per batch, when the flush went through.
                let (mut messages, mut bytes) = (0u64, 0u64);
                let write = async {
                    for _ in 0..WRITE_BATCH {
                        let frame = match frame.take() {
                            Some(frame) => frame,
                            None => match rx.try_recv() {
                                Ok(frame) => frame,
                                Err(_) => break,
                            },
                        };
                        messages += 1;
                        bytes += frame.len() as u64;
                        feed(&mut sink, frame).await?;
                    }
                    sink.flush().await
                };
                let written = tokio::select! {
                    r = write => r.is_ok(),
                    _ = &mut cancelled => false,
                };
                if written {
                    metrics.client_messages_sent.inc_by(messages);
                    metrics.client_bytes_sent.inc_by(bytes);
                }
                if !written {
                    control.token().cancel();
                    // Try the close frame anyway: it goes out if the socket drains in time.
                    return (send_close(&mut sink, &control).await, sink);
                }
                sent_data = true;
            }
            _ = tick.tick() => {
                ticks += 1;
                if ticks.is_multiple_of(2) && control.silent_for() > ping_interval * 2 {
                    info!("no answer for {:?}; closing dead connection", control.silent_for());
                    control.token().cancel();
                    return (false, sink);
                }
                let keepalive = (!sent_data).then(|| Message::Binary(Bytes::from_static(&encode::KEEPALIVE)));
                let ping = ticks.is_multiple_of(2).then(|| Message::Ping(Bytes::new()));
                sent_data = false;
                for msg in keepalive.into_iter().chain(ping) {
                    let sent = tokio::select! {
                        r = sink.send(msg) => r.is_ok(),
                        _ = &mut cancelled => false,
                    };
                    if !sent {
                        control.token().cancel();
                        return (send_close(&mut sink, &control).await, sink);
                    }
                }
            }
        }
    }
}
