//! A TCP proxy that adds one-way latency and can cut its link: simulated inter-region network for
//! `concord demo`, the load test and the replication tests (these machines have no `tc netem`).
//!
//! Each direction of each connection is a reader that stamps chunks with their due time and a
//! writer that sends them at that time, so order is kept and latency is added, not compounded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub struct DelayProxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    stop: CancellationToken,
}

struct ProxyState {
    target: SocketAddr,
    delay: Duration,
    /// Cancelled to drop every open connection; replaced when the link heals.
    generation: CancellationToken,
    cut: bool,
}

impl DelayProxy {
    /// Listens on `listen` (port 0 for any) and forwards to `target` with `delay` each way.
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        delay: Duration,
    ) -> std::io::Result<DelayProxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(ProxyState {
            target,
            delay,
            generation: CancellationToken::new(),
            cut: false,
        }));
        let stop = CancellationToken::new();
        let (st, stop2) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop2.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { continue };
                let (target, delay, generation, cut) = {
                    let s = st.lock().unwrap();
                    (s.target, s.delay, s.generation.clone(), s.cut)
                };
                if cut {
                    drop(client); // a cut link refuses connections
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = generation.cancelled() => debug!("proxy link cut"),
                        _ = pipe(cr, sw, delay) => {}
                        _ = pipe(sr, cw, delay) => {}
                    }
                });
            }
        });
        Ok(DelayProxy { addr, state, stop })
    }

    /// Points the proxy at another address (a restarted node), for new connections.
    pub fn set_target(&self, target: SocketAddr) {
        self.state.lock().unwrap().target = target;
    }

    /// Cuts the link: open connections drop and new ones are refused until [`DelayProxy::heal`].
    pub fn cut(&self) {
        let mut s = self.state.lock().unwrap();
        s.cut = true;
        s.generation.cancel();
    }

    pub fn heal(&self) {
        let mut s = self.state.lock().unwrap();
        s.cut = false;
        s.generation = CancellationToken::new();
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.state.lock().unwrap().generation.cancel();
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read. Ends when either side does;
/// dropping it (a cut) drops whatever was still in flight.
async fn pipe(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}
