use concord_crdt::{encode, yrs};
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use yrs::{Text, Transact, WriteTxn};
#[tokio::main]
async fn main() {
    let url = std::env::args().nth(1).unwrap();
    let gap: u64 = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(0);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(&url, None, true)
        .await
        .unwrap();
    let (mut tx, mut rx) = ws.split();
    let doc = yrs::Doc::new();
    let mut l = vec![];
    for i in 0..300 {
        let u = {
            let mut txn = doc.transact_mut();
            let t = txn.get_or_insert_text("t");
            t.insert(&mut txn, 0, &format!("{i};"));
            txn.encode_update_v1()
        };
        let f = encode::update(&u);
        let t0 = Instant::now();
        tx.send(Message::Binary(f.clone().into())).await.unwrap();
        loop {
            if let Some(Ok(Message::Binary(b))) = rx.next().await {
                if b[..] == f[..] {
                    break;
                }
            }
        }
        l.push(t0.elapsed().as_micros());
        tokio::time::sleep(Duration::from_millis(gap)).await;
    }
    l.sort();
    println!("p50={}us p99={}us max={}us", l[150], l[297], l[299]);
}
