//! A peer link's WebSocket, whichever side opened it, as two bounded channels.
//!
//! The accepting side has an axum `WebSocket`, the dialing side a tokio-tungstenite stream; both
//! are bridged the same way so the link logic above deals in messages only. A reader task feeds
//! `incoming` (waiting when it is full: backpressure on the peer), a writer task drains
//! `outgoing`, pings every [`PING_EVERY`] and closes a link silent for [`DEAD_AFTER`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::control::Control;

/// Peer links are pinged far more often than clients: a dead region must show up in status and
/// logs within seconds.
pub const PING_EVERY: Duration = Duration::from_secs(2);
/// A link that carried nothing (not even a pong) for this long is closed.
pub const DEAD_AFTER: Duration = Duration::from_secs(8);
/// Longest one batch of writes may take. Generous, since one message may be a whole document's
/// snapshot (up to 256 MiB: 4.4 MB/s gets it through), but a peer that stopped reading must not
/// hold its link forever: nothing else notices while the writer is blocked.
const WRITE_STALL: Duration = Duration::from_secs(60);
/// Messages buffered each way.
const QUEUE: usize = 1024;

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
    Close,
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
            Self::Close(_) => Incoming::Close,
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
            Self::Close(_) => Incoming::Close,
            _ => Incoming::Ignored,
        }
    }
}

/// Bridges `ws` to channels. The link ends (both tasks stop) when `control` is cancelled, the
/// peer closes, the socket fails, or the link goes silent.
pub fn bridge<W, M, E>(ws: W, stop: CancellationToken) -> PeerSocket
where
    W: Stream<Item = Result<M, E>> + Sink<M> + Send + Unpin + 'static,
    M: WsMessage,
    E: Send + 'static,
{
    let control = Arc::new(Control::new(stop));
    control.seen();
    let (sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(QUEUE);
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(QUEUE);

    let reader_control = control.clone();
    tokio::spawn(async move {
        let c = reader_control;
        loop {
            let msg = tokio::select! {
                _ = c.token().cancelled() => return,
                msg = stream.next() => msg,
            };
            c.seen();
            match msg.map(|m| m.map(M::kind)) {
                Some(Ok(Incoming::Data(bytes))) => {
                    if in_tx.send(bytes).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Incoming::Ignored)) => {}
                _ => {
                    c.token().cancel();
                    return;
                }
            }
        }
    });

    let writer_control = control.clone();
    tokio::spawn(async move {
        let c = writer_control;
        let mut sink = sink;
        let mut tick = tokio::time::interval(PING_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = c.token().cancelled() => {
                    let (code, reason) = c.reason().unwrap_or((1001, "node shutting down".into()));
                    // What was queued before the close goes first: a handshake's last message
                    // (`Welcome`) is often queued right before a duplicate link is closed, and
                    // the dialer must get it to learn who it reached.
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Ok(frame) = out_rx.try_recv() {
                            sink.feed(M::binary(frame)).await?;
                        }
                        sink.send(M::close(code, reason)).await
                    })
                    .await;
                    return;
                }
                frame = out_rx.recv() => {
                    let Some(frame) = frame else { return };
                    // A peer that stopped reading blocks the write once the socket buffers are
                    // full: race it against the end of the link, and against the link going
                    // silent, so a stuck peer is let go (its updates wait in the log).
                    let write = async {
                        sink.feed(M::binary(frame)).await?;
                        while let Ok(frame) = out_rx.try_recv() {
                            sink.feed(M::binary(frame)).await?;
                        }
                        sink.flush().await
                    };
                    let written = tokio::select! {
                        r = write => r.is_ok(),
                        _ = c.token().cancelled() => false,
                        _ = tokio::time::sleep(WRITE_STALL) => false,
                    };
                    if !written {
                        c.token().cancel();
                        return;
                    }
                }
                _ = tick.tick() => {
                    if c.silent_for() > DEAD_AFTER {
                        c.close(1001, "peer link silent; assumed dead");
                        continue;
                    }
                    let sent = tokio::select! {
                        r = sink.send(M::ping()) => r.is_ok(),
                        _ = c.token().cancelled() => false,
                    };
                    if !sent {
                        c.token().cancel();
                        return;
                    }
                }
            }
        }
    });

    PeerSocket {
        outgoing: out_tx,
        incoming: in_rx,
        control,
    }
}
