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
                    let _ = tokio::time::timeout(Duration::from_secs(2), sink.send(M::close(code, reason))).await;
                    return;
                }
                frame = out_rx.recv() => {
                    let Some(frame) = frame else { return };
                    let mut ok = sink.feed(M::binary(frame)).await.is_ok();
                    while ok {
                        let Ok(frame) = out_rx.try_recv() else { break };
                        ok = sink.feed(M::binary(frame)).await.is_ok();
                    }
                    if !ok || sink.flush().await.is_err() {
                        c.token().cancel();
                        return;
                    }
                }
                _ = tick.tick() => {
                    if c.silent_for() > DEAD_AFTER {
                        c.close(1001, "peer link silent; assumed dead");
                        continue;
                    }
                    if sink.send(M::ping()).await.is_err() {
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
