//! Peer links under bad network conditions that a cut does not show: a link too slow for one
//! large message to cross within the dead-link timeout, and a link that goes silent (sockets
//! open, nothing arriving). Real `concord` processes, linked through a shaping proxy.

use std::time::{Duration, Instant};

use concord_tests::YClient;
use concord_tests::cluster::Cluster;

const LINK: Duration = Duration::from_millis(20);
/// The peer link's dead-link timeout and ping period (`replication/socket.rs`).
const DEAD_AFTER: Duration = Duration::from_secs(8);
const PING_EVERY: Duration = Duration::from_secs(2);

/// Node 0 dials node 1; the single link carries both directions.
const EDGE: [(usize, usize); 1] = [(0, 1)];

fn link_events(c: &Cluster, node: usize, what: &str) -> usize {
    c.nodes[node]
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(what))
        .count()
}

async fn peer_connected(c: &Cluster, node: usize) -> bool {
    c.status(node).await["peers"][0]["connected"] == true
}

/// One update far larger than the link carries in `DEAD_AFTER` (2 MB at 150 kB/s: about 13 s)
/// reaches the other region, and so does the update written after it, on the same link: it is
/// never declared dead and restarted (which would resend the same message forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_update_crosses_a_slow_link_without_breaking_it() {
    const RATE: u64 = 150_000;
    const BIG: usize = 2_000_000;
    let c = Cluster::start(2, &EDGE, LINK, &[]).await;
    c.wait_linked(&EDGE).await;
    let a = YClient::connect(&c.nodes[0].ws_url("links/big")).await;
    let b = YClient::connect(&c.nodes[1].ws_url("links/big")).await;
    c.set_bandwidth(0, 1, Some(RATE));

    let started = Instant::now();
    a.append("t", &"x".repeat(BIG));
    a.append("t", "tail");
    let arrived = b
        .wait_for(Duration::from_secs(35), |s| {
            s.text_len("t") as usize == BIG + 4
        })
        .await;
    let took = started.elapsed();
    assert!(
        arrived.is_ok(),
        "B has {} of {} characters after {took:?}; link events on A: {} up, {} down",
        b.text("t").len(),
        BIG + 4,
        link_events(&c, 0, "peer link up"),
        link_events(&c, 0, "peer link down"),
    );
    assert!(b.text("t").ends_with("xtail"));
    let slowest = Duration::from_secs_f64(BIG as f64 / RATE as f64 * 0.9);
    assert!(
        took >= slowest.max(DEAD_AFTER),
        "arrived in {took:?}: was the bandwidth limit applied?"
    );
    for node in 0..2 {
        assert_eq!(
            link_events(&c, node, "peer link down"),
            0,
            "node {node} lost the link"
        );
        assert_eq!(
            link_events(&c, node, "peer link up"),
            1,
            "node {node} reconnected"
        );
        assert!(peer_connected(&c, node).await);
    }
}

/// A blackholed link (the proxy keeps both TCP connections open and forwards nothing, so no
/// close ever arrives) is found dead on both ends by silence alone, within about `DEAD_AFTER`
/// plus a ping period. Each region keeps serving its own clients meanwhile, and once packets flow
/// again the link comes back and both regions converge on what was written on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_link_is_found_dead_and_recovers_when_it_speaks_again() {
    let c = Cluster::start(2, &EDGE, LINK, &[]).await;
    c.wait_linked(&EDGE).await;
    let a = YClient::connect(&c.nodes[0].ws_url("links/quiet")).await;
    let b = YClient::connect(&c.nodes[1].ws_url("links/quiet")).await;
    a.append("t", "a0 ");
    b.wait_text("t", "a0 ").await;

    c.silence(0, 1);
    let silenced = Instant::now();
    a.append("t", "a1 ");
    b.append("t", "b1 ");
    // Within DEAD_AFTER (after the last thing heard, at most a ping period before the silence)
    // plus some slack for a busy machine, both ends report the peer down.
    let limit = DEAD_AFTER + PING_EVERY + Duration::from_secs(2);
    let mut down = [None, None];
    while down.iter().any(Option::is_none) {
        for (node, at) in down.iter_mut().enumerate() {
            if at.is_none() && !peer_connected(&c, node).await {
                *at = Some(silenced.elapsed());
            }
        }
        assert!(
            silenced.elapsed() < limit,
            "silent link not detected within {limit:?}: down after {down:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for node in 0..2 {
        assert!(
            c.nodes[node].logged(&["peer link down", "silent"]),
            "node {node} did not log the silent link"
        );
    }
    // Local clients are served throughout: a newcomer in each region sees that region's writes.
    let a2 = YClient::connect(&c.nodes[0].ws_url("links/quiet")).await;
    a2.wait_text("t", &a.text("t")).await;
    let b2 = YClient::connect(&c.nodes[1].ws_url("links/quiet")).await;
    b2.wait_text("t", &b.text("t")).await;
    assert!(!a.text("t").contains("b1") && !b.text("t").contains("a1"));

    c.heal(0, 1);
    c.wait_linked(&EDGE).await;
    let text = c
        .wait_converged("links/quiet", Duration::from_secs(20))
        .await;
    for token in ["a0 ", "a1 ", "b1 "] {
        assert!(text.contains(token), "{token:?} missing from {text:?}");
    }
    b.wait_text("t", &text).await;
    a.wait_text("t", &text).await;
}
