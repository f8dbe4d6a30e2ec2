//! Measures catch-up: a region misses N updates across D documents (it is stopped while the other
//! two write), then restarts; reports how long until it holds everything and how many bytes and
//! replication messages that took, against the size of the documents.
//!
//!     cargo run --release -p concord-tests --example catchup -- [updates=10000] [docs=100]

use std::time::{Duration, Instant};

use concord_tests::YClient;
use concord_tests::cluster::{Cluster, mesh};

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let updates: usize = a.get(1).map(|s| s.parse().unwrap()).unwrap_or(10_000);
    let docs: usize = a.get(2).map(|s| s.parse().unwrap()).unwrap_or(100);
    let per_doc = updates / docs;
    let mut c = Cluster::start(3, &mesh(3), Duration::from_millis(50), &[]).await;
    c.wait_linked(&mesh(3)).await;
    let names: Vec<String> = (0..docs).map(|d| format!("catchup/{d}")).collect();
    // Some content everywhere first, so the documents are known to all three.
    for d in &names {
        let w = YClient::connect(&c.nodes[0].ws_url(d)).await;
        w.append("t", &"seed ".repeat(200));
        w.wait(|s| s.frames.iter().any(|f| f.starts_with(&[0, 2])))
            .await;
    }
    for d in &names {
        c.wait_converged(d, Duration::from_secs(60)).await;
    }

    assert!(c.nodes[2].sigterm().await.success());
    let writers: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let url = c.nodes[i % 2].ws_url(d);
            tokio::spawn(async move {
                let w = YClient::connect(&url).await;
                for k in 0..per_doc {
                    w.append("t", &format!("<{k}>"));
                }
                let last = format!("<{}>", per_doc - 1);
                let check = YClient::connect(&url).await;
                check.wait(|s| s.text("t").contains(&last)).await;
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let doc_bytes: usize = {
        let mut total = 0;
        for d in &names {
            total += concord_tests::server_doc(&c.nodes[0], d)
                .await
                .unwrap()
                .full_state()
                .len();
        }
        total
    };

    let started = Instant::now();
    c.nodes[2].restart().await;
    c.aim_proxies();
    for d in &names {
        c.wait_converged(d, Duration::from_secs(120)).await;
    }
    let took = started.elapsed();
    let status = c.status(2).await;
    let (mut msgs, mut bytes) = (0, 0);
    for p in status["peers"].as_array().unwrap() {
        msgs += p["received_updates"].as_u64().unwrap();
        bytes += p["received_bytes"].as_u64().unwrap();
    }
    println!(
        "missed {} updates on {docs} documents: caught up in {:.2} s (restart included), \
         {msgs} replication messages, {bytes} bytes received; the documents total {doc_bytes} bytes",
        per_doc * docs,
        took.as_secs_f64()
    );
}
