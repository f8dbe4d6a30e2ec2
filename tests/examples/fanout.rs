//! Quick local fan-out measurement: R rooms × C clients, every client sending real Yjs updates at
//! a fixed rate; reports updates/s, deliveries/s and delivery latency percentiles.
//!
//!     cargo run --release -p concord-tests --example fanout -- <ws-base-url> <rooms> <clients/room> <updates/s per client> <seconds>
//!
//! Latency is matched by update bytes: Concord relays the exact bytes it received.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_crdt::{encode, yrs};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use yrs::{Text, Transact, WriteTxn};

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let base = a.get(1).cloned().unwrap_or("ws://127.0.0.1:8080/ws".into());
    let rooms: usize = a.get(2).map(|s| s.parse().unwrap()).unwrap_or(100);
    let per_room: usize = a.get(3).map(|s| s.parse().unwrap()).unwrap_or(10);
    let rate: f64 = a.get(4).map(|s| s.parse().unwrap()).unwrap_or(1.0);
    let secs: u64 = a.get(5).map(|s| s.parse().unwrap()).unwrap_or(20);

    let hasher = RandomState::new();
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Default::default();
    let lat: Arc<Mutex<Vec<u32>>> = Default::default();
    let sent_count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now() + Duration::from_secs(3);
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for r in 0..rooms {
        for c in 0..per_room {
            let url = format!("{base}/fanout-{r}");
            let (sent, lat, sent_count, hasher) = (
                sent.clone(),
                lat.clone(),
                sent_count.clone(),
                hasher.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&url, None, true).await.expect("connect");
                ws.send(Message::Binary(encode::sync_step1(&Default::default()).into())).await.unwrap();
                let doc = yrs::Doc::new();
                let period = Duration::from_secs_f64(1.0 / rate);
                let first = start + Duration::from_millis(((r * per_room + c) as u64 * 997) % 1000);
                let mut tick = tokio::time::interval_at(first.into(), period);
                let mut i = 0u64;
                let stop = tokio::time::sleep_until((end + Duration::from_secs(2)).into());
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = tick.tick(), if Instant::now() < end => {
                            let u = {
                                let mut txn = doc.transact_mut();
                                let t = txn.get_or_insert_text("t");
                                let len = t.len(&txn);
                                t.insert(&mut txn, (i as u32 * 7919) % (len + 1), &format!("{c}:{i};"));
                                txn.encode_update_v1()
                            };
                            let frame = encode::update(&u);
                            let h = hasher.hash_one(&frame[..]);
                            sent.lock().unwrap().insert(h, Instant::now());
                            sent_count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            ws.send(Message::Binary(frame.into())).await.unwrap();
                            i += 1;
                        }
                        m = ws.next() => {
                            let Some(Ok(m)) = m else { break };
                            if let Message::Binary(b) = m
                                && b.starts_with(&[0, 2]) {
                                    let now = Instant::now();
                                    let h = hasher.hash_one(&b[..]);
                                    if let Some(t) = sent.lock().unwrap().get(&h) {
                                        lat.lock().unwrap().push(now.duration_since(*t).as_micros() as u32);
                                    }
                                    // Apply it, as a real editor does, so local edits land in the
                                    // current text rather than in a private branch of it.
                                    if let Ok(m) = concord_crdt::decode_frame(&b)
                                        && let Some(concord_crdt::ClientMessage::Update(u)) = m.into_iter().next() {
                                            let _ = doc.transact_mut().apply_update(u.decoded);
                                        }
                                }
                        }
                    }
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut l = lat.lock().unwrap().clone();
    l.sort_unstable();
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let n = sent_count.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "connections={} rooms={rooms} updates/s={:.0} deliveries/s={:.0} p50={:.2}ms p99={:.2}ms max={:.2}ms",
        rooms * per_room,
        n as f64 / secs as f64,
        l.len() as f64 / secs as f64,
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
}
