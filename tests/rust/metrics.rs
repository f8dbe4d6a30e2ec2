//! Prometheus metrics, scraped from the real binary over real sockets after known actions: the
//! values must move by exactly what was done (N updates give N more new updates, a normal close
//! one more 1000, a killed peer shows as down with a growing backlog), not merely exist.

use std::time::Duration;

use concord_crdt::encode;
use concord_tests::cluster::Cluster;
use concord_tests::{Server, WAIT, YClient, mint, upgrade_status};

/// One sample of the exposition: its name, labels and value.
type Sample = (String, Vec<(String, String)>, f64);

/// One scrape: the exposition's samples.
struct Scrape(Vec<Sample>);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').expect("closing brace");
                    let labels = inner
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                            (k.to_string(), v.trim_end_matches('"').to_string())
                        })
                        .collect();
                    (name, labels)
                }
                None => (series, Vec::new()),
            };
            samples.push((name.to_string(), labels, value.parse().expect("a number")));
        }
        Scrape(samples)
    }

    /// The value of the one series named `name` carrying every label of `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} matches several series");
        found.first().copied()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {name} {labels:?}"))
    }
}

/// Scrapes `url`, checking the answer is an OpenMetrics exposition.
async fn scrape(url: &str) -> Scrape {
    let resp = reqwest::get(url).await.expect("scraping /metrics");
    assert_eq!(resp.status(), 200, "scraping {url}");
    let kind = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        kind.starts_with("application/openmetrics-text; version=1.0.0"),
        "{kind}"
    );
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "exposition not terminated");
    Scrape::parse(&text)
}

/// Scrapes `url` until the series' value satisfies `ok` (the metric may be counted just after
/// what the test observed, e.g. a delivery counted after its flush returned); panics with the
/// last value after [`WAIT`].
async fn wait_value(url: &str, name: &str, labels: &[(&str, &str)], ok: impl Fn(f64) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = scrape(url).await.get(name, labels);
        if v.is_some_and(&ok) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} {labels:?} is {v:?}, not what was expected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const UPDATES: &str = "concord_updates_total";

fn client(verdict: &str) -> [(&'static str, &str); 2] {
    [("source", "client"), ("verdict", verdict)]
}

/// Total frames and bytes a client has received.
fn received(c: &YClient) -> (usize, usize) {
    let frames = c.frames();
    (frames.len(), frames.iter().map(Vec::len).sum())
}

#[tokio::test]
async fn updates_connections_and_deliveries_are_counted_exactly() {
    // No keep-alive messages during the test: every message written is a delivery the clients see.
    let server = Server::start(&["--region", "eu", "--ping-interval", "1h"]).await;
    let url = server.http_url("/metrics");
    let before = scrape(&url).await;
    assert_eq!(
        before.value("concord_connections_open", &[("region", "eu")]),
        0.0
    );
    assert_eq!(before.value(UPDATES, &client("new")), 0.0);

    let a = YClient::connect(&server.ws_url("doc")).await;
    let b = YClient::connect(&server.ws_url("doc")).await;
    wait_value(&url, "concord_connections_open", &[], |v| v == 2.0).await;

    const N: usize = 5;
    let mut sent = Vec::new();
    for i in 0..N {
        sent.push(a.append_sent("t", &format!("{i}")));
    }
    b.wait_text("t", "01234").await;
    // Every update is echoed to its sender too: wait for the last echo.
    let last = sent.last().unwrap().clone();
    a.wait(|s| s.echoed(&last)).await;
    let after = scrape(&url).await;
    assert_eq!(after.value(UPDATES, &client("new")), N as f64);
    assert_eq!(
        after.value(UPDATES, &client("known")),
        0.0,
        "empty Step2s are not updates"
    );

    // Everything written to the two sockets is what the two clients received.
    let (fa, ba) = received(&a);
    let (fb, bb) = received(&b);
    wait_value(&url, "concord_client_messages_sent_total", &[], |v| {
        v == (fa + fb) as f64
    })
    .await;
    wait_value(&url, "concord_client_bytes_sent_total", &[], |v| {
        v == (ba + bb) as f64
    })
    .await;

    // The same update again: known, and not delivered to anyone.
    a.send(sent[0].clone());
    wait_value(&url, UPDATES, &client("known"), |v| v == 1.0).await;
    assert_eq!(scrape(&url).await.value(UPDATES, &client("new")), N as f64);

    // A client that closes normally: one more 1000, and the open count back down.
    let closes = after.value("concord_connections_closed_total", &[("code", "1000")]);
    b.close();
    b.wait_closed().await;
    wait_value(&url, "concord_connections_open", &[], |v| v == 1.0).await;
    wait_value(
        &url,
        "concord_connections_closed_total",
        &[("code", "1000")],
        |v| v == closes + 1.0,
    )
    .await;

    // An update that is not one: refused, and its connection closed with 1007.
    let bad = YClient::connect(&server.ws_url("doc")).await;
    bad.send(encode::update(&[0xff, 0xff, 0xff, 0xff]));
    assert_eq!(bad.wait_closed().await.0, 1007);
    wait_value(&url, UPDATES, &client("refused"), |v| v == 1.0).await;
    wait_value(
        &url,
        "concord_connections_closed_total",
        &[("code", "1007")],
        |v| v == 1.0,
    )
    .await;
    let end = scrape(&url).await;
    assert_eq!(end.value(UPDATES, &client("new")), N as f64);
    assert_eq!(end.value("concord_connections_open", &[]), 1.0);
    drop(a);
}

#[tokio::test]
async fn documents_and_store_commits_are_counted() {
    let server = Server::start(&["--evict-after", "300ms", "--max-db-size", "123456789"]).await;
    let url = server.http_url("/metrics");
    let before = scrape(&url).await;
    // What the disk alerts read: the limit as configured, the data directory's file system.
    assert_eq!(
        before.value("concord_store_max_size_bytes", &[]),
        123456789.0
    );
    let available = before.value("concord_store_disk_available_bytes", &[]);
    let capacity = before.value("concord_store_disk_capacity_bytes", &[]);
    assert!(
        available > 0.0 && available <= capacity,
        "{available} of {capacity}"
    );
    let batch_sum = before.value("concord_store_commit_batch_updates_sum", &[]);
    let commits = before.value("concord_store_commit_seconds_count", &[]);
    let fsyncs = before.value("concord_store_fsyncs_total", &[]);
    let committed = before.value("concord_committed_seq", &[]);
    assert_eq!(before.value("concord_documents_live", &[]), 0.0);
    assert_eq!(before.value("concord_documents_loaded_total", &[]), 0.0);
    assert_eq!(
        before.value("concord_document_load_seconds_count", &[]),
        0.0
    );

    let c = YClient::connect(&server.ws_url("evicted")).await;
    let mut last = Vec::new();
    for i in 0..3 {
        last = c.append_sent("t", &format!("{i}"));
    }
    c.wait(|s| s.echoed(&last)).await;
    let live = scrape(&url).await;
    assert_eq!(live.value("concord_documents_live", &[]), 1.0);
    assert_eq!(live.value("concord_documents_loaded_total", &[]), 1.0);
    assert_eq!(live.value("concord_document_load_seconds_count", &[]), 1.0);
    // Three log entries, whatever the number of commits they took.
    assert_eq!(
        live.value("concord_store_commit_batch_updates_sum", &[]) - batch_sum,
        3.0
    );
    assert_eq!(live.value("concord_committed_seq", &[]) - committed, 3.0);
    assert!(live.value("concord_store_commit_seconds_count", &[]) > commits);
    assert!(live.value("concord_store_fsyncs_total", &[]) > fsyncs);
    assert!(live.value("concord_store_size_bytes", &[]) > 0.0);
    assert_eq!(live.value("concord_store_write_errors_total", &[]), 0.0);

    // Nobody left: the room idles out and is evicted.
    drop(c);
    wait_value(&url, "concord_documents_evicted_total", &[], |v| v == 1.0).await;
    // The room is counted evicted when it decides to stop; it is no longer live once its task
    // has ended.
    wait_value(&url, "concord_documents_live", &[], |v| v == 0.0).await;
    let gone = scrape(&url).await;
    assert_eq!(gone.value("concord_documents_loaded_total", &[]), 1.0);

    // Opened again: loaded from the store a second time.
    let again = YClient::connect(&server.ws_url("evicted")).await;
    again.wait_text("t", "012").await;
    let reloaded = scrape(&url).await;
    assert_eq!(reloaded.value("concord_documents_loaded_total", &[]), 2.0);
    assert_eq!(
        reloaded.value("concord_document_load_seconds_count", &[]),
        2.0
    );
    assert!(reloaded.value("process_resident_memory_bytes", &[]) > 0.0);
    assert!(reloaded.value("process_open_fds", &[]) > 0.0);
}

#[tokio::test]
async fn auth_refusals_are_counted_and_metrics_need_an_admin_token() {
    const S: &str = "metrics-test-secret";
    let server = Server::start(&["--auth-secret", S, "--metrics-listen", "127.0.0.1:0"]).await;
    server
        .wait_logged(
            &["serving /metrics, /healthz and /readyz without authentication"],
            1,
            WAIT,
        )
        .await
        .expect("the metrics listener's address");
    let line = server
        .log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("serving /metrics, /healthz and /readyz without authentication"))
        .cloned()
        .unwrap();
    let internal = line
        .split("addr=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let open_url = format!("http://{internal}/metrics");
    let refusals =
        |s: &Scrape, reason: &str| s.value("concord_auth_refusals_total", &[("reason", reason)]);

    // The internal listener needs no token and counts no refusal.
    let before = scrape(&open_url).await;
    for reason in [
        "missing_token",
        "invalid_token",
        "expired_token",
        "forbidden",
    ] {
        assert_eq!(refusals(&before, reason), 0.0, "{reason}");
    }

    let doc = server.ws_url("secret-doc");
    assert_eq!(upgrade_status(&doc, None).await.0, 401);
    assert_eq!(upgrade_status(&doc, Some("Bearer not-a-jwt")).await.0, 401);
    let expired = mint(S, &[("*", "write")], false, Duration::ZERO);
    assert_eq!(
        upgrade_status(&doc, Some(&format!("Bearer {expired}")))
            .await
            .0,
        401
    );
    let reader_of_other = mint(S, &[("other", "read")], false, Duration::from_secs(60));
    assert_eq!(
        upgrade_status(&doc, Some(&format!("Bearer {reader_of_other}")))
            .await
            .0,
        403
    );

    // The main listener's /metrics: refused without a token and to a non-admin token.
    let main = format!("http://{}/metrics", server.addr);
    assert_eq!(reqwest::get(&main).await.unwrap().status(), 401);
    let not_admin = format!("{main}?token={reader_of_other}");
    assert_eq!(reqwest::get(&not_admin).await.unwrap().status(), 403);
    let admin = scrape(&server.http_url("/metrics")).await;

    assert_eq!(refusals(&admin, "missing_token"), 2.0);
    assert_eq!(refusals(&admin, "invalid_token"), 1.0);
    assert_eq!(refusals(&admin, "expired_token"), 1.0);
    assert_eq!(refusals(&admin, "forbidden"), 2.0);
    // Both listeners show the same node.
    let open = scrape(&open_url).await;
    assert_eq!(refusals(&open, "forbidden"), 2.0);
}

#[tokio::test]
async fn a_killed_peer_shows_down_with_a_growing_backlog_then_reconnects() {
    // Node 1 dials node 0: node 0 sees one link per connection, so its reconnects are exact.
    let mut c = Cluster::start(2, &[(1, 0)], Duration::ZERO, &[]).await;
    c.wait_linked(&[(1, 0)]).await;
    let url = c.nodes[0].http_url("/metrics");
    let peer = [("peer", "node-1"), ("peer_region", "r1")];
    wait_value(&url, "concord_peer_up", &peer, |v| v == 1.0).await;
    let up = scrape(&url).await;
    assert_eq!(up.value("concord_peer_reconnects_total", &peer), 0.0);
    assert_eq!(up.value("concord_peer_backlog_entries", &peer), 0.0);
    assert_eq!(
        up.value(
            "concord_node_info",
            &[("node_id", "node-0"), ("region", "r0")]
        ),
        1.0
    );
    assert!(up.value("concord_peer_messages_received_total", &peer) > 0.0);

    c.nodes[1].kill9().await;
    wait_value(&url, "concord_peer_up", &peer, |v| v == 0.0).await;

    // Written while the peer is down: the backlog grows by one entry per update.
    let writer = YClient::connect(&c.nodes[0].ws_url("while-down")).await;
    for i in 1..=3 {
        let sent = writer.append_sent("t", &format!("{i}"));
        writer.wait(|s| s.echoed(&sent)).await;
        wait_value(&url, "concord_peer_backlog_entries", &peer, |v| {
            v == i as f64
        })
        .await;
    }
    let down = scrape(&url).await;
    let sent_before = down.value("concord_peer_messages_sent_total", &peer);
    assert_eq!(down.value("concord_peer_up", &peer), 0.0);

    c.nodes[1].restart().await;
    c.aim_proxies();
    wait_value(&url, "concord_peer_up", &peer, |v| v == 1.0).await;
    wait_value(&url, "concord_peer_backlog_entries", &peer, |v| v == 0.0).await;
    let back = scrape(&url).await;
    assert_eq!(back.value("concord_peer_reconnects_total", &peer), 1.0);
    assert!(back.value("concord_peer_messages_sent_total", &peer) >= sent_before + 3.0);
    assert!(back.value("concord_peer_bytes_sent_total", &peer) > 0.0);
    assert_eq!(
        back.value("concord_peer_acked_seq", &peer),
        back.value("concord_committed_seq", &[])
    );
}
