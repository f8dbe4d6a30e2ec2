//! `--connect-rate N`: how fast a server takes new clients. N connections, C at a time, each
//! timed from the TCP connect to the end of the sync handshake (Step1 sent, the server's Step2
//! received), then closed. Run with and without `--auth-secret` to see what verifying a token
//! costs on that path. The URLs (tokens included) are prepared before the clock starts, so the
//! generator's own signing is not counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use concord_crdt::encode;
use concord_crdt::yrs::StateVector;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::dial::Dialer;
use crate::stats::{Summary, new_histogram};

/// Longest one connection may take to sync before it counts as an error.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub connections: usize,
    pub concurrency: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub secs: f64,
    pub per_second: f64,
    /// Connect + handshake time of the connections that synced.
    pub latency: Summary,
}

/// Connects to each of `urls`, `concurrency` at a time.
pub async fn run(urls: Vec<String>, concurrency: usize, dialer: Dialer) -> Outcome {
    let urls = Arc::new(urls);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (urls, next, dialer) = (urls.clone(), next.clone(), dialer.clone());
            tokio::spawn(async move {
                let mut hist = new_histogram();
                let mut errors = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(url) = urls.get(i) else { break };
                    match tokio::time::timeout(SYNC_TIMEOUT, connect_and_sync(&dialer, url)).await {
                        Ok(Ok(took)) => {
                            let _ = hist.record(took.as_micros().max(1) as u64);
                        }
                        Ok(Err(e)) => errors.push(e),
                        Err(_) => errors.push(format!("no Step2 within {SYNC_TIMEOUT:?}")),
                    }
                }
                (hist, errors)
            })
        })
        .collect();
    let mut hist: Histogram<u64> = new_histogram();
    let mut errors = Vec::new();
    for w in workers {
        let (h, e) = w.await.expect("connect worker panicked");
        let _ = hist.add(&h);
        errors.extend(e);
    }
    let secs = start.elapsed().as_secs_f64();
    Outcome {
        connections: urls.len(),
        concurrency,
        errors: errors.len(),
        first_error: errors.into_iter().next(),
        secs,
        per_second: hist.len() as f64 / secs.max(1e-9),
        latency: Summary::of(&hist),
    }
}

/// One client's arrival: connect, send Step1, wait for the Step2, close; returns the time to
/// the Step2.
async fn connect_and_sync(dialer: &Dialer, url: &str) -> Result<Duration, String> {
    let start = Instant::now();
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let mut ws = dialer.connect(url, config).await?;
    let step1 = encode::sync_step1(&StateVector::default());
    ws.send(Message::Binary(step1.into()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) if b.starts_with(&[0, 1]) => break,
            Some(Ok(Message::Close(f))) => return Err(format!("closed by the server: {f:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed by the server".into()),
        }
    }
    let took = start.elapsed();
    // The close is sent, not waited for.
    let _ = ws.close(None).await;
    Ok(took)
}
