//! A TCP proxy that adds one-way latency, can limit bandwidth, and can cut or silence its link:
//! simulated inter-region network for `concord demo`, the load test and the replication tests
//! (these machines have no `tc netem`).
//!
//! Each direction of each connection is a reader that stamps chunks with their due time and a
//! writer that sends them at that time, so order is kept and latency is added, not compounded.
//! A bandwidth limit paces the reader (a chunk of n bytes occupies the link for n / rate), so a
//! fast sender is held back by TCP backpressure as on a slow real link, instead of being buffered
//! here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub struct DelayProxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    shaping: Arc<Shaping>,
    stop: CancellationToken,
}

struct ProxyState {
    target: SocketAddr,
    delay: Duration,
    /// Cancelled to drop every open connection; replaced when the link heals.
    generation: CancellationToken,
    cut: bool,
}

/// What every connection of one proxy reads before moving bytes, so changes apply at once.
#[derive(Default)]
pub(crate) struct Shaping {
    /// Bytes per second each way; 0 for no limit.
    rate: AtomicU64,
    /// While true, connections stay open but nothing is forwarded either way (a blackhole).
    silent: watch::Sender<bool>,
}

impl Shaping {
    /// Bytes per second each way (0: no limit).
    #[cfg(test)]
    pub(crate) fn limited(bytes_per_sec: u64) -> Shaping {
        let s = Shaping::default();
        s.rate.store(bytes_per_sec, Ordering::Relaxed);
        s
    }

    pub(crate) fn set_silent(&self, silent: bool) {
        self.silent.send_replace(silent);
    }

    /// Waits until the link is not silent.
    async fn speaking(&self) {
        let mut silent = self.silent.subscribe();
        let _ = silent.wait_for(|s| !*s).await;
    }
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
        let shaping = Arc::new(Shaping::default());
        let stop = CancellationToken::new();
        let (st, sh, stop2) = (state.clone(), shaping.clone(), stop.clone());
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
                let shaping = sh.clone();
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
                        _ = pipe(cr, sw, delay, &shaping) => {}
                        _ = pipe(sr, cw, delay, &shaping) => {}
                    }
                });
            }
        });
        Ok(DelayProxy {
            addr,
            state,
            shaping,
            stop,
        })
    }

    /// Points the proxy at another address (a restarted node), for new connections.
    pub fn set_target(&self, target: SocketAddr) {
        self.state.lock().unwrap().target = target;
    }

    /// Limits each direction of every connection to `bytes_per_sec` (None: no limit), from now on.
    pub fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        self.shaping
            .rate
            .store(bytes_per_sec.unwrap_or(0), Ordering::Relaxed);
    }

    /// Cuts the link: open connections drop and new ones are refused until [`DelayProxy::heal`].
    pub fn cut(&self) {
        let mut s = self.state.lock().unwrap();
        s.cut = true;
        s.generation.cancel();
    }

    /// Blackholes the link: connections (open and new) stay open, but nothing is forwarded either
    /// way until [`DelayProxy::heal`]; then what was held back flows again. Unlike a cut, neither
    /// end learns anything: only silence tells them.
    pub fn silence(&self) {
        self.shaping.set_silent(true);
    }

    /// Ends a cut or a silence.
    pub fn heal(&self) {
        let mut s = self.state.lock().unwrap();
        s.cut = false;
        s.generation = CancellationToken::new();
        self.shaping.set_silent(false);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.state.lock().unwrap().generation.cancel();
    }
}

/// Bytes read at once: 64 KiB, or about 1/20 s worth under a bandwidth limit so pacing is smooth.
fn read_size(rate: u64) -> usize {
    const MAX: usize = 64 * 1024;
    if rate == 0 {
        MAX
    } else {
        ((rate / 20) as usize).clamp(512, MAX)
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read, within the bandwidth limit and
/// not while silent. Ends when either side does; dropping it (a cut) drops whatever was still in
/// flight.
pub(crate) async fn pipe(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    delay: Duration,
    shaping: &Shaping,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        // When the link is free to carry the next byte.
        let mut free_at = Instant::now();
        loop {
            shaping.speaking().await;
            let rate = shaping.rate.load(Ordering::Relaxed);
            let len = read_size(rate);
            match from.read(&mut buf[..len]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let now = Instant::now();
                    if rate > 0 {
                        free_at =
                            free_at.max(now) + Duration::from_secs_f64(n as f64 / rate as f64);
                    } else {
                        free_at = now;
                    }
                    if tx.send((free_at + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                    // Nothing more is read until this chunk is through: backpressure.
                    tokio::time::sleep_until(free_at).await;
                }
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            shaping.speaking().await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        shaping.speaking().await;
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes through a shaped pipe arrive no faster than the limit, and not at all while silent.
    #[tokio::test(start_paused = true)]
    async fn bandwidth_and_silence_are_applied() {
        let shaping = Shaping::limited(10_000);
        let (mut src, from) = tokio::io::duplex(1 << 20);
        let (to, mut dst) = tokio::io::duplex(1 << 20);
        let started = Instant::now();
        src.write_all(&[7u8; 50_000]).await.unwrap();
        let copy = pipe(from, to, Duration::from_millis(100), &shaping);
        let check = async {
            let mut got = vec![0u8; 50_000];
            dst.read_exact(&mut got).await.unwrap();
            // 50 kB at 10 kB/s, plus the latency.
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(4_900), "{took:?}");
            assert!(took <= Duration::from_millis(5_200), "{took:?}");

            shaping.set_silent(true);
            src.write_all(b"held").await.unwrap();
            let mut small = [0u8; 4];
            let held = tokio::time::timeout(Duration::from_secs(60), dst.read_exact(&mut small));
            assert!(held.await.is_err(), "forwarded while silent");
            shaping.set_silent(false);
            dst.read_exact(&mut small).await.unwrap();
            assert_eq!(&small, b"held");
            drop(src);
        };
        tokio::join!(copy, check);
    }
}
