//! What regions log when they stop. A clean stop (Ctrl-C) is not a failure: neither the node
//! stopping nor the peers it leaves warn about it, while a peer that dies (`kill -9`) is still a
//! warning on its survivor. Every line says which region it comes from, and peers are named by
//! region, also in `concord demo`, where several regions share one process and one log.

use std::time::Duration;

use concord_tests::Server;

const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "shutdown-logs-secret";

/// Lines written by the log subscriber (timestamped), not the demo's own `println!`s.
fn log_lines(server: &Server) -> Vec<String> {
    server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("20") && l.contains('Z'))
        .cloned()
        .collect()
}

fn warnings(server: &Server) -> Vec<String> {
    log_lines(server)
        .into_iter()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect()
}

/// Every log line carries `node{region=<region>}` for one of `regions`.
fn assert_every_line_names_its_region(server: &Server, regions: &[&str]) {
    let lines = log_lines(server);
    assert!(!lines.is_empty());
    for line in lines {
        assert!(
            regions
                .iter()
                .any(|r| line.contains(&format!("node{{region={r}}}"))),
            "a line without its region: {line}"
        );
    }
}

/// Two real nodes, `eu` dialing `us`, with their link up on both ends.
async fn linked_pair() -> (Server, Server) {
    let us = Server::start(&["--region", "us", "--node-id", "us", "--peer-secret", SECRET]).await;
    let peers = format!("http://{}", us.addr);
    let eu = Server::start(&[
        "--region",
        "eu",
        "--node-id",
        "eu",
        "--peer-secret",
        SECRET,
        "--peers",
        &peers,
    ])
    .await;
    for (node, peer) in [(&eu, "us"), (&us, "eu")] {
        node.wait_logged(
            &["peer link up", &format!("peer_region={peer} peer={peer}")],
            1,
            WAIT,
        )
        .await
        .expect("the link did not come up");
    }
    (eu, us)
}

/// Ctrl-C on `concord demo` with its three regions linked: every link closes, and nothing is
/// logged as a warning. Every line names its region, and the links are named by peer region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_demo_stop_warns_about_nothing_and_every_line_names_its_region() {
    let regions = ["eu", "us", "ap"];
    let mut demo = Server::start_demo(&["--latency", "10ms", "--regions", "eu,us,ap"]).await;
    // Each of the three links is up at both of its ends.
    demo.wait_logged(&["peer link up"], 6, WAIT)
        .await
        .expect("the demo's links did not all come up");
    for region in regions {
        for peer in regions.iter().filter(|p| **p != region) {
            assert!(
                demo.logged(&[
                    &format!("node{{region={region}}}"),
                    &format!("peer{{peer_region={peer} peer={peer}}}"),
                    "peer link up",
                ]),
                "{region} does not name its link to {peer}"
            );
        }
    }

    assert!(demo.sigint().await.success());
    demo.wait_logged(&["concord_server::node: stopped"], 3, WAIT)
        .await
        .expect("not every region logged that it stopped");
    demo.wait_logged(&["INFO", "peer link closed"], 6, WAIT)
        .await
        .expect("not every link end logged its close");
    assert_eq!(warnings(&demo), Vec::<String>::new());
    assert_every_line_names_its_region(&demo, &regions);
}

/// A single `concord serve` node stopped by Ctrl-C warns about nothing either, and its peer,
/// which stays up, hears that it is shutting down: not a warning. Both name their region on
/// every line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_stopping_cleanly_is_not_a_warning_on_either_side() {
    let (eu, mut us) = linked_pair().await;
    assert!(us.sigint().await.success());
    us.wait_logged(&["concord_server::node: stopped"], 1, WAIT)
        .await
        .expect("us did not log that it stopped");
    us.wait_logged(
        &[
            "INFO",
            "peer_region=eu",
            "peer link closed: this node is shutting down",
        ],
        1,
        WAIT,
    )
    .await
    .expect("us did not log its link closing");
    assert_eq!(warnings(&us), Vec::<String>::new());
    assert_every_line_names_its_region(&us, &["us"]);

    eu.wait_logged(
        &[
            "INFO",
            "node{region=eu}",
            "peer{peer_region=us peer=us}",
            "the peer is shutting down",
        ],
        1,
        WAIT,
    )
    .await
    .expect("eu did not log that us is shutting down");
    assert!(!eu.logged(&["peer link down"]), "{:?}", warnings(&eu));
    assert_every_line_names_its_region(&eu, &["eu"]);
}

/// A peer that dies without a word (`kill -9`) is a real outage: its survivor still warns, and
/// says which region it lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_killed_is_still_a_warning_on_its_survivor() {
    let (eu, mut us) = linked_pair().await;
    us.kill9().await;
    eu.wait_logged(
        &[
            "WARN",
            "node{region=eu}",
            "peer{peer_region=us peer=us}",
            "peer link down",
        ],
        1,
        WAIT,
    )
    .await
    .expect("eu did not warn that its link to us went down");
}

/// A newcomer's first `cargo run --release` says what it did and where to go, and nothing else:
/// a fresh store's first open is no migration to report.
#[tokio::test]
async fn a_fresh_server_starts_with_a_short_quiet_log() {
    let mut server = Server::start(&[]).await;
    server
        .wait_logged(&["web demo: http://"], 1, WAIT)
        .await
        .expect("the demo's URL is logged");
    assert!(server.sigint().await.success());
    server
        .wait_logged(&["stopped"], 1, WAIT)
        .await
        .expect("the stop is logged");
    let lines = log_lines(&server);
    let expected = [
        "generated a node id",
        "store opened",
        "listening",
        "web demo: http://",
        "shutting down",
        "store closed",
        "stopped",
    ];
    let unexpected: Vec<&String> = lines
        .iter()
        .filter(|l| !expected.iter().any(|e| l.contains(e)))
        .collect();
    assert!(unexpected.is_empty(), "unexpected lines: {unexpected:#?}");
    assert!(warnings(&server).is_empty());
}
