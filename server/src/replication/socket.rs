//! A peer link's WebSocket, whichever side opened it, as two bounded channels.
//!
//! The accepting side has an axum `WebSocket`, the dialing side a tokio-tungstenite stream; both
//! are bridged the same way so the link logic above deals in whole messages only. A reader task
//! puts frames back into messages and feeds `incoming` (waiting when it is full: backpressure on
//! the peer); a writer task drains `outgoing`, cutting each message into frames of at most
//! [`chunk::CHUNK`] bytes and pinging every [`PING_EVERY`] between frames. Every frame received
//! counts as a sign of life, so a large message on a slow link keeps the link up, while a link
//! on which nothing arrives for [`DEAD_AFTER`] is closed.

mod chunk;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, warn};

use crate::control::Control;
use axum::extract::ws::close_code;
pub use chunk::{CHUNK, MAX_FRAME};
use chunk::{Pieces, Reassembler};

/// Peer links are pinged far more often than clients: a dead region must show up in status and
/// logs within seconds.
pub const PING_EVERY: Duration = Duration::from_secs(2);
/// A link on which nothing (not a frame, not a pong) arrived for this long is closed.
pub const DEAD_AFTER: Duration = Duration::from_secs(8);
/// Longest one write may take (a frame of at most [`MAX_FRAME`] bytes, plus whatever small
/// messages were batched before it). A slow link that keeps moving frames is kept however long a
/// message takes; a peer that stopped reading is let go (nothing else notices while the writer is
/// blocked, since it still answers pings).
const WRITE_STALL: Duration = Duration::from_secs(60);
/// Messages buffered each way.
const QUEUE: usize = 1024;
/// The reason of the close frame (code 1001, going away) a node sends its peers when it shuts
/// down; a peer that receives it knows the link did not fail.
pub const SHUTTING_DOWN: &str = "node shutting down";

/// One side of a peer link, as channels.
pub struct PeerSocket {
    pub outgoing: mpsc::Sender<Bytes>,
    pub incoming: mpsc::Receiver<Bytes>,
    pub control: Arc<Control>,
}

/// What a received WebSocket message means to a peer link.
pub enum Incoming {
    Data(Bytes),
    /// Ping, pong, or text (peers never send text): nothing to deliver.
    Ignored,
    /// The peer's close frame: its code and reason, if it gave them.
    Close(Option<(u16, String)>),
}

/// The WebSocket message types both libraries have, reduced to what a peer link needs.
pub trait WsMessage: Sized + Send + 'static {
    fn binary(b: Bytes) -> Self;
    fn ping() -> Self;
    fn close(code: u16, reason: String) -> Self;
    fn kind(self) -> Incoming;
}

impl WsMessage for axum::extract::ws::Message {
    fn binary(b: Bytes) -> Self {
        Self::Binary(b)
    }
    fn ping() -> Self {
        Self::Ping(Bytes::new())
    }
    fn close(code: u16, reason: String) -> Self {
        Self::Close(Some(axum::extract::ws::CloseFrame {
            code,
            reason: reason.into(),
        }))
    }
    fn kind(self) -> Incoming {
        match self {
            Self::Binary(b) => Incoming::Data(b),
            Self::Close(f) => Incoming::Close(f.map(|f| (f.code, f.reason.to_string()))),
            _ => Incoming::Ignored,
        }
    }
}

impl WsMessage for tokio_tungstenite::tungstenite::Message {
    fn binary(b: Bytes) -> Self {
        Self::Binary(b)
    }
    fn ping() -> Self {
        Self::Ping(Bytes::new())
    }
    fn close(code: u16, reason: String) -> Self {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        Self::Close(Some(CloseFrame {
            code: code.into(),
            reason: reason.into(),
        }))
    }
    fn kind(self) -> Incoming {
        match self {
            Self::Binary(b) => Incoming::Data(b),
            Self::Close(f) => Incoming::Close(f.map(|f| (f.code.into(), f.reason.to_string()))),
            _ => Incoming::Ignored,
        }
    }
}

/// Bridges `ws` to channels. The link ends (both tasks stop) when `control` is cancelled, the
/// peer closes, the socket fails, the peer sends a malformed frame, or the link goes silent.
/// One message may be up to [`super::PEER_MAX_MESSAGE`] bytes, before authentication too: an
/// unauthenticated socket can make us buffer that much (see [`super::MAX_PENDING_HANDSHAKES`]).
///
/// `stop` is cancelled when the node shuts down, and only then: the close frame then says
/// [`SHUTTING_DOWN`], so the peer knows the link did not fail. Both tasks run on `tasks`, which
/// shutdown waits for (bounded), so that frame goes out before the process ends.
pub fn bridge<W, M, E>(ws: W, stop: CancellationToken, tasks: &TaskTracker) -> PeerSocket
where
    W: Stream<Item = Result<M, E>> + Sink<M> + Send + Unpin + 'static,
    M: WsMessage,
    E: Send + 'static,
{
    bridge_with_limit(ws, stop, tasks, super::PEER_MAX_MESSAGE)
}

fn bridge_with_limit<W, M, E>(
    ws: W,
    stop: CancellationToken,
    tasks: &TaskTracker,
    max_message: usize,
) -> PeerSocket
where
    W: Stream<Item = Result<M, E>> + Sink<M> + Send + Unpin + 'static,
    M: WsMessage,
    E: Send + 'static,
{
    // The link's own token, so that a link ending for its own reasons is told apart from the
    // node's shutdown.
    let control = Arc::new(Control::new(stop.child_token()));
    control.seen();
    let (sink, stream) = ws.split();
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(QUEUE);
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(QUEUE);
    tasks.spawn(read_frames(stream, in_tx, control.clone(), max_message).in_current_span());
    tasks.spawn(write_frames(sink, out_rx, control.clone(), stop).in_current_span());
    PeerSocket {
        outgoing: out_tx,
        incoming: in_rx,
        control,
    }
}

/// Reads frames into messages until the link ends. Silence is timed only while waiting on the
/// socket: while `incoming` is full, the wait is ours, not the peer's.
async fn read_frames<S, M, E>(
    mut stream: S,
    incoming: mpsc::Sender<Bytes>,
    c: Arc<Control>,
    max_message: usize,
) where
    S: Stream<Item = Result<M, E>> + Unpin,
    M: WsMessage,
{
    let mut reassembly = Reassembler::new(max_message);
    loop {
        let msg = tokio::select! {
            _ = c.token().cancelled() => return,
            msg = tokio::time::timeout(DEAD_AFTER, stream.next()) => msg,
        };
        let Ok(msg) = msg else {
            c.close(close_code::AWAY, "peer link silent; assumed dead");
            return;
        };
        c.seen();
        match msg.map(|m| m.map(M::kind)) {
            Some(Ok(Incoming::Data(frame))) => match reassembly.push(frame) {
                Ok(None) => {}
                Ok(Some(message)) => {
                    let delivered = tokio::select! {
                        _ = c.token().cancelled() => false,
                        r = incoming.send(message) => r.is_ok(),
                    };
                    if !delivered {
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "malformed frame on a peer link; closing it");
                    c.close(e.close_code(), e.to_string());
                    return;
                }
            },
            Some(Ok(Incoming::Ignored)) => {}
            // What the peer said is why the link ends (and the close frame answered to it).
            Some(Ok(Incoming::Close(Some((code, reason))))) => {
                c.close(code, reason);
                return;
            }
            _ => {
                c.token().cancel();
                return;
            }
        }
    }
}

/// Writes queued messages as frames, with pings in between, until the link ends; then sends what
/// was queued before the end, and the close frame.
async fn write_frames<K, M>(
    mut sink: K,
    mut outgoing: mpsc::Receiver<Bytes>,
    c: Arc<Control>,
    node_stop: CancellationToken,
) where
    K: Sink<M> + Unpin,
    M: WsMessage,
{
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The message being sent, when it has frames left.
    let mut current: Option<Pieces> = None;
    loop {
        let sending = current.as_ref().is_some_and(|p| !p.is_done());
        let written = tokio::select! {
            biased;
            _ = c.token().cancelled() => break,
            // Between two frames of a long message too, so the peer hears from us.
            _ = tick.tick() => within_stall(&c, sink.send(M::ping())).await,
            msg = outgoing.recv(), if !sending => match msg {
                Some(msg) => {
                    current = Some(Pieces::new(msg));
                    continue;
                }
                None => return,
            },
            _ = std::future::ready(()), if sending => {
                let frame = current.as_mut().and_then(Iterator::next).expect("a frame is left");
                let more = current.as_ref().is_some_and(|p| !p.is_done());
                // Small messages are batched into one flush; the frames of a long message are
                // flushed one by one, so each must get through within the stall limit.
                let flush = more || outgoing.is_empty();
                within_stall(&c, async {
                    sink.feed(M::binary(frame)).await?;
                    if flush {
                        sink.flush().await?;
                    }
                    Ok::<_, K::Error>(())
                })
                .await
            }
        };
        match written {
            Write::Done => {}
            Write::Cancelled => break,
            Write::Failed => {
                c.token().cancel();
                return;
            }
            Write::Stalled => {
                // Given up on: its updates wait in the log for the next link.
                c.close(
                    close_code::AWAY,
                    format!("peer link stalled: no frame written in {WRITE_STALL:?}"),
                );
                return;
            }
        }
    }
    // Every link-level end records its reason; one that did not (the socket failed, or the
    // peer closed without a code) is not a shutdown, and must not look like one to the peer.
    let (code, reason) = c.reason().unwrap_or_else(|| {
        if node_stop.is_cancelled() {
            (close_code::AWAY, SHUTTING_DOWN.into())
        } else {
            (close_code::ERROR, "peer link ended".into())
        }
    });
    // What was queued before the close goes first: a handshake's last message (`Welcome`) is
    // often queued right before a duplicate link is closed, and the dialer must get it to learn
    // who it reached.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Some(frame) = current.as_mut().and_then(Iterator::next) {
                sink.feed(M::binary(frame)).await?;
            } else if let Ok(msg) = outgoing.try_recv() {
                current = Some(Pieces::new(msg));
            } else {
                break;
            }
        }
        sink.send(M::close(code, reason)).await
    })
    .await;
}

/// How one write ended.
enum Write {
    Done,
    /// The socket failed.
    Failed,
    /// No progress for [`WRITE_STALL`]: the peer stopped reading.
    Stalled,
    /// The link is ending for another reason.
    Cancelled,
}

/// Runs one write, giving up when the link ends or it makes no progress for [`WRITE_STALL`].
async fn within_stall<E>(c: &Control, write: impl Future<Output = Result<(), E>>) -> Write {
    tokio::select! {
        r = write => if r.is_ok() { Write::Done } else { Write::Failed },
        _ = c.token().cancelled() => Write::Cancelled,
        _ = tokio::time::sleep(WRITE_STALL) => Write::Stalled,
    }
}

#[cfg(test)]
mod tests {
    //! Two bridged ends over in-memory sockets and a shaping pipe, in paused time.

    use super::*;
    use crate::delay_proxy::{Shaping, pipe};
    use tokio::io::DuplexStream;
    use tokio::time::Instant;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

    /// What each socket buffers, like a small kernel buffer.
    const SOCKET_BUFFER: usize = 64 * 1024;

    async fn ws(io: DuplexStream, role: Role) -> WebSocketStream<DuplexStream> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME))
            .max_frame_size(Some(MAX_FRAME));
        WebSocketStream::from_raw_socket(io, role, Some(config)).await
    }

    /// The two raw ends of a link through a pipe shaped by `shaping`, 20 ms each way.
    async fn link(
        shaping: &Arc<Shaping>,
    ) -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (a, a_wire) = tokio::io::duplex(SOCKET_BUFFER);
        let (b_wire, b) = tokio::io::duplex(SOCKET_BUFFER);
        let (ar, aw) = tokio::io::split(a_wire);
        let (br, bw) = tokio::io::split(b_wire);
        let delay = Duration::from_millis(20);
        for (from, to) in [(ar, bw), (br, aw)] {
            let shaping = shaping.clone();
            tokio::spawn(async move { pipe(from, to, delay, &shaping).await });
        }
        (ws(a, Role::Client).await, ws(b, Role::Server).await)
    }

    fn message(len: usize) -> Bytes {
        (0..len).map(|i| (i % 253) as u8).collect::<Vec<_>>().into()
    }

    /// A message that takes 84 s on the link (far beyond the dead-link timeout and the stall
    /// limit) arrives whole, and so does the one behind it, on the same link.
    #[tokio::test(start_paused = true)]
    async fn a_large_message_on_a_slow_link_keeps_the_link_up() {
        let shaping = Arc::new(Shaping::limited(100_000));
        let (a, b) = link(&shaping).await;
        let a = bridge(a, CancellationToken::new(), &TaskTracker::new());
        let mut b = bridge(b, CancellationToken::new(), &TaskTracker::new());
        let big = message(8 << 20);
        let started = Instant::now();
        a.outgoing.send(big.clone()).await.unwrap();
        a.outgoing.send(Bytes::from_static(b"after")).await.unwrap();
        assert!(b.incoming.recv().await.unwrap() == big);
        assert!(
            started.elapsed() >= Duration::from_secs(80),
            "link not slowed"
        );
        assert_eq!(b.incoming.recv().await.unwrap(), "after");
        for c in [&a.control, &b.control] {
            assert!(!c.token().is_cancelled(), "link closed: {:?}", c.reason());
        }
    }

    /// A link that goes silent while a large message is blocked in the writer is found dead by
    /// both ends after `DEAD_AFTER`, not after the stall limit.
    #[tokio::test(start_paused = true)]
    async fn a_silent_link_is_found_dead_even_while_a_write_is_blocked() {
        let shaping = Arc::new(Shaping::limited(0));
        let (a, b) = link(&shaping).await;
        let a = bridge(a, CancellationToken::new(), &TaskTracker::new());
        let mut b = bridge(b, CancellationToken::new(), &TaskTracker::new());
        a.outgoing.send(Bytes::from_static(b"hello")).await.unwrap();
        assert_eq!(b.incoming.recv().await.unwrap(), "hello");

        shaping.set_silent(true);
        let silenced = Instant::now();
        a.outgoing.send(message(8 << 20)).await.unwrap();
        for c in [&a.control, &b.control] {
            c.token().cancelled().await;
            let took = silenced.elapsed();
            assert!(took <= DEAD_AFTER + Duration::from_secs(1), "{took:?}");
            let (code, reason) = c.reason().unwrap();
            assert_eq!(code, 1001);
            assert!(reason.contains("silent"), "{reason}");
        }
    }

    /// A peer that stops reading (yet still pings) is let go once no frame got through for
    /// `WRITE_STALL`, and not before.
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_is_dropped_after_the_stall_limit() {
        // Directly connected: the (unbounded) pipe would take in everything.
        let (a, b) = tokio::io::duplex(SOCKET_BUFFER);
        let (a, b) = (ws(a, Role::Client).await, ws(b, Role::Server).await);
        let a = bridge(a, CancellationToken::new(), &TaskTracker::new());
        let (mut b_sink, _b_stream_never_read) = b.split();
        tokio::spawn(async move {
            loop {
                if b_sink.send(WsMessage::ping()).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let started = Instant::now();
        a.outgoing.send(message(8 << 20)).await.unwrap();
        a.control.token().cancelled().await;
        let took = started.elapsed();
        assert!(took >= WRITE_STALL, "dropped after {took:?}");
        assert!(took <= WRITE_STALL + Duration::from_secs(5), "{took:?}");
        assert!(a.control.reason().unwrap().1.contains("stalled"));
    }

    /// Frames that cannot make a message end the link with a protocol error.
    /// The close frame says `node shutting down` when the node stops, and only then: a link
    /// that ends for its own reasons without recording one must not look like a planned stop
    /// to the peer (which logs that at info rather than as a failure).
    #[tokio::test(start_paused = true)]
    async fn only_a_node_shutdown_tells_the_peer_it_is_shutting_down() {
        for node_stops in [true, false] {
            let shaping = Arc::new(Shaping::limited(0));
            let (a, b) = link(&shaping).await;
            let stop = CancellationToken::new();
            let tasks = TaskTracker::new();
            let a = bridge(a, stop.clone(), &tasks);
            let b = bridge(b, CancellationToken::new(), &TaskTracker::new());
            if node_stops {
                stop.cancel();
            } else {
                a.control.token().cancel();
            }
            b.control.token().cancelled().await;
            let (code, reason) = b.control.reason().expect("b got a close frame");
            if node_stops {
                assert_eq!((code, reason.as_str()), (1001, SHUTTING_DOWN));
            } else {
                assert_ne!(reason, SHUTTING_DOWN, "code {code}");
            }
            tasks.close();
            tasks.wait().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_malformed_frame_closes_the_link() {
        let shaping = Arc::new(Shaping::limited(0));
        let (mut a, b) = link(&shaping).await;
        let b = bridge_with_limit(b, CancellationToken::new(), &TaskTracker::new(), 4 * CHUNK);
        // A bare `PeerMessage`, as an older node would send it.
        a.send(WsMessage::binary(Bytes::from_static(b"\x05\x01")))
            .await
            .unwrap();
        b.control.token().cancelled().await;
        assert_eq!(b.control.reason().unwrap().0, 1002);
    }

    /// More than the limit in pieces is refused with 1009 as soon as it is exceeded.
    #[tokio::test(start_paused = true)]
    async fn pieces_beyond_the_limit_close_the_link() {
        let shaping = Arc::new(Shaping::limited(0));
        let (a, b) = link(&shaping).await;
        let a = bridge(a, CancellationToken::new(), &TaskTracker::new());
        let b = bridge_with_limit(b, CancellationToken::new(), &TaskTracker::new(), 4 * CHUNK);
        a.outgoing.send(message(4 * CHUNK + 1)).await.unwrap();
        b.control.token().cancelled().await;
        assert_eq!(b.control.reason().unwrap().0, 1009);
    }
}
