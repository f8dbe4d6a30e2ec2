//! Multi-region active-active replication: separate `concord` processes on loopback, each pair
//! linked through a test-owned proxy adding 50 ms one way (and able to cut the link).

use std::time::{Duration, Instant};

use concord_tests::cluster::{Cluster, SECRET, mesh, ring, star};
use concord_tests::{Server, YClient, assert_contains};

const LINK: Duration = Duration::from_millis(50);
const CONVERGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_in_one_region_reaches_clients_of_the_other_two() {
    let c = Cluster::start(3, &mesh(3), LINK, &[]).await;
    c.wait_linked(&mesh(3)).await;
    let a = YClient::connect(&c.nodes[0].ws_url("xr/hello")).await;
    let b = YClient::connect(&c.nodes[1].ws_url("xr/hello")).await;
    let z = YClient::connect(&c.nodes[2].ws_url("xr/hello")).await;
    let started = Instant::now();
    a.append("t", "bonjour");
    b.wait_text("t", "bonjour").await;
    z.wait_text("t", "bonjour").await;
    let took = started.elapsed();
    // One 50 ms hop plus two commits; far below a second even on a busy machine.
    assert!(
        took >= LINK,
        "delivered in {took:?}, faster than the link: was the proxy bypassed?"
    );
    assert!(
        took < Duration::from_secs(2),
        "cross-region delivery took {took:?}"
    );
    // and back the other way
    z.append("t", "!");
    a.wait_text("t", "bonjour!").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_in_three_regions_on_twenty_documents_converge() {
    let c = Cluster::start(3, &mesh(3), LINK, &[]).await;
    c.wait_linked(&mesh(3)).await;
    let docs: Vec<String> = (0..20).map(|d| format!("conc/{d}")).collect();
    let mut clients = Vec::new();
    for d in &docs {
        for n in 0..3 {
            clients.push((n, YClient::connect(&c.nodes[n].ws_url(d)).await));
        }
    }
    for round in 0..10 {
        for (n, cl) in &clients {
            cl.append("t", &format!("{n}.{round} "));
            cl.set("m", "last", &format!("{n}.{round}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for d in &docs {
        let text = c.wait_converged(d, CONVERGE).await;
        for n in 0..3 {
            for round in 0..10 {
                assert!(text.contains(&format!("{n}.{round} ")), "{d}: {text}");
            }
        }
    }
    // Clients converge too, and the concurrent map writes resolved to one value everywhere.
    for d in 0..20 {
        let group: Vec<_> = clients[d * 3..d * 3 + 3].iter().map(|(_, c)| c).collect();
        let expected = c.docs(&docs[d]).await[0]
            .as_ref()
            .unwrap()
            .text("t")
            .unwrap();
        for cl in &group {
            cl.wait_text("t", &expected).await;
        }
        let last: Vec<_> = group.iter().map(|cl| cl.map_get("m", "last")).collect();
        assert!(last.iter().all(|l| l == &last[0]), "{last:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_region_keeps_working_and_converges_after_healing() {
    let c = Cluster::start(3, &mesh(3), LINK, &[]).await;
    c.wait_linked(&mesh(3)).await;
    let clients: Vec<YClient> = futures_util::future::join_all(
        (0..3).map(|n| YClient::connect_owned(c.nodes[n].ws_url("part"))),
    )
    .await;
    clients[0].append("t", "before ");
    for cl in &clients {
        cl.wait_text("t", "before ").await;
    }

    c.cut(2, 0);
    c.cut(2, 1);
    for round in 0..20 {
        for (n, cl) in clients.iter().enumerate() {
            cl.append("t", &format!("[{n}:{round}]"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The cut-off region serves its users: its client sees its own edits, echoed by its server...
    let isolated = YClient::connect(&c.nodes[2].ws_url("part")).await;
    isolated.wait(|s| s.text("t").contains("[2:19]")).await;
    // ...but nothing from the others, and it reports the links down.
    assert!(!isolated.text("t").contains("[0:"));
    let status = c.status(2).await;
    assert!(
        status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["connected"] == false),
        "{status}"
    );

    c.heal(2, 0);
    c.heal(2, 1);
    let text = c.wait_converged("part", CONVERGE).await;
    for n in 0..3 {
        assert!(text.contains(&format!("[{n}:19]")), "{text}");
    }
    for cl in &clients {
        cl.wait_text("t", &text).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_region_catches_up_with_only_the_updates_it_missed() {
    let mut c = Cluster::start(3, &mesh(3), LINK, &[]).await;
    c.wait_linked(&mesh(3)).await;
    let docs: Vec<String> = (0..5).map(|d| format!("kill/{d}")).collect();
    // Sizeable documents, so a full resync would show up in the bytes.
    let big = "x".repeat(64 * 1024);
    for d in &docs {
        let w = YClient::connect(&c.nodes[0].ws_url(d)).await;
        w.append("t", &big);
        c.wait_converged(d, CONVERGE).await;
    }

    // Writers in the two other regions keep going while the third is killed mid-stream.
    let mut writers = Vec::new();
    for d in &docs {
        for n in 0..2 {
            writers.push(YClient::connect(&c.nodes[n].ws_url(d)).await);
        }
    }
    let write_round = |round: usize| {
        for (k, w) in writers.iter().enumerate() {
            w.append("t", &format!("<{k}.{round}>"));
        }
    };
    for round in 0..10 {
        write_round(round);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.nodes[2].kill9().await;
    for round in 10..40 {
        write_round(round);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before_kill = (10 * writers.len()) as u64;
    let while_down = (30 * writers.len()) as u64;
    // Writers 2d and 2d+1 share document d: each sees the other's last edit.
    for (k, w) in writers.iter().enumerate() {
        let other = format!("<{}.39>", k ^ 1);
        w.wait(|s| s.text("t").contains(&other)).await;
    }

    // The restarted region links to region 0 first, then to region 1. Whichever link comes up
    // first carries the other region's updates until the second does, and a new carry resends
    // up to REORDER_SLACK of that origin's updates (routing.rs): here all of region 0's, the five
    // 64 KiB documents included, had region 1 come first. That cost of a route change is by
    // design; the order keeps this test about what a restart itself resends.
    c.cut(2, 1);
    c.nodes[2].restart().await;
    c.aim_proxies();
    c.wait_linked(&[(0, 1), (0, 2)]).await;
    c.heal(2, 1);
    c.wait_linked(&mesh(3)).await;
    for d in &docs {
        c.wait_converged(d, CONVERGE).await;
    }
    for (k, w) in writers.iter().enumerate() {
        let text = c.docs(&docs[k / 2]).await[2]
            .as_ref()
            .unwrap()
            .text("t")
            .unwrap();
        assert!(
            text.contains(&format!("<{k}.39>")),
            "region 2 lacks <{k}.39>"
        );
        assert_eq!(w.text("t"), text);
    }
    // Everything the restarted node received, of any kind (log entries, state vectors and their
    // answers, presence): counters start at zero with the new process.
    let status = c.status(2).await;
    let (mut updates, mut bytes) = (0, 0);
    for p in status["peers"].as_array().unwrap() {
        updates += p["received_updates"].as_u64().unwrap();
        bytes += p["received_bytes"].as_u64().unwrap();
    }
    eprintln!(
        "restarted node received {updates} updates, {bytes} bytes; {while_down} written while it \
         was down, {before_kill} just before"
    );
    // Each missed update reaches it from both live regions (the mesh relays); those written just
    // before the kill may not have been acknowledged yet and come again. A resync would carry the
    // documents (5 × 64 KiB) again.
    assert!(
        updates >= while_down,
        "received {updates} < {while_down} missed"
    );
    assert!(
        updates <= 2 * (while_down + before_kill),
        "received {updates} updates: not incremental"
    );
    assert!(
        bytes < (docs.len() * big.len()) as u64 / 2,
        "received {bytes} bytes: that is a full resync"
    );
}

/// Both ends of a pair list each other: they keep one link, so each update crosses once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ends_dialing_keep_a_single_link() {
    let c = Cluster::start(2, &mesh(2), LINK, &[]).await;
    c.wait_linked(&mesh(2)).await;
    // Give both dialers time to have tried: the second link is refused or replaces the first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a = YClient::connect(&c.nodes[0].ws_url("single")).await;
    for i in 0..20 {
        a.append("t", &format!("<{i}>"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.wait_converged("single", CONVERGE).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..2 {
        let s = c.status(i).await;
        let peers = s["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 1, "one entry per peer: {s}");
        assert_eq!(peers[0]["connected"], true, "{s}");
    }
    let got = c.status(1).await["peers"][0]["received_updates"]
        .as_u64()
        .unwrap();
    // Twenty edits, each its own update; two live links would deliver each twice.
    assert!(
        (1..=20).contains(&got),
        "node 1 received {got} updates for 20: more than one link streams"
    );
}

async fn write_everywhere_and_count(edges: Vec<(usize, usize)>, name: &str) {
    let n = 4;
    let c = Cluster::start(n, &edges, LINK, &[]).await;
    c.wait_linked(&edges).await;
    let per_node = 10;
    for node in 0..n {
        let cl = YClient::connect(&c.nodes[node].ws_url(name)).await;
        for i in 0..per_node {
            cl.append("t", &format!("<{node}.{i}>"));
        }
        // The client's own text has its edits at once; wait until its server has them too.
        let last = format!("<{node}.{}>", per_node - 1);
        let deadline = Instant::now() + CONVERGE;
        while !concord_tests::server_doc(&c.nodes[node], name)
            .await
            .and_then(|d| d.text("t"))
            .unwrap_or_default()
            .contains(&last)
        {
            assert!(
                Instant::now() < deadline,
                "node {node} never stored its own edits"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let text = c.wait_converged(name, CONVERGE).await;
    for node in 0..n {
        assert!(text.contains(&format!("<{node}.{}>", per_node - 1)));
    }
    // No loops. Links carry both directions, so an update may reach a node over two paths (the
    // second copy brings nothing new and goes no further): at most once per link direction.
    // Every other message (acknowledgements, at most one per update received; state vectors and
    // their answers when a document opens, a few per link) is bounded too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (total, all) = c.received().await;
    let updates = (n * per_node) as u64;
    let links = edges.len() as u64;
    let bound = updates * 2 * links;
    let all_bound = 2 * bound + 8 * 2 * links;
    eprintln!(
        "{name}: {total} replicated updates, {all} peer messages in all, for {updates} updates \
         on {n} nodes (bounds {bound} and {all_bound})"
    );
    assert!(
        total <= bound,
        "{total} messages for {updates} updates: looping?"
    );
    assert!(
        all <= all_bound,
        "{all} peer messages for {updates} updates: something loops"
    );
    // ...and once converged, nothing circulates any more: no update at all, and once the last
    // round of what each node holds went out (every 2 s, only what changed), no message either.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let settled = c.received().await;
    assert_eq!(
        settled.0, total,
        "updates still circulating after convergence"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        c.received().await,
        settled,
        "messages still circulating after convergence"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_node_ring_converges_without_loops() {
    write_everywhere_and_count(ring(4), "ring").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_node_star_converges_without_loops() {
    write_everywhere_and_count(star(4), "star").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_mesh_link_is_routed_around() {
    let c = Cluster::start(3, &mesh(3), LINK, &[]).await;
    c.wait_linked(&mesh(3)).await;
    c.cut(0, 2);
    let a = YClient::connect(&c.nodes[0].ws_url("around")).await;
    let z = YClient::connect(&c.nodes[2].ws_url("around")).await;
    let started = Instant::now();
    a.append("t", "via B");
    z.wait_text("t", "via B").await;
    let took = started.elapsed();
    // Two 50 ms hops through B; well under the cut link's retry cycle.
    assert!(
        took >= 2 * LINK,
        "arrived in {took:?}: the cut link was used"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_peer_secret_is_refused() {
    let good = Server::start(&["--node-id", "good", "--peer-secret", SECRET]).await;
    let peer_url = format!("http://{}", good.addr);
    let wrong = Server::start(&[
        "--node-id",
        "wrong",
        "--peer-secret",
        "not-the-secret",
        "--peers",
        &peer_url,
    ])
    .await;
    // Without a secret the acceptor refuses every peer link.
    let open = Server::start(&["--node-id", "open"]).await;
    let open_url = format!("http://{}", open.addr);
    let dialer = Server::start(&[
        "--node-id",
        "dialer",
        "--peer-secret",
        SECRET,
        "--peers",
        &open_url,
    ])
    .await;

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(good.logged(&["peer link refused", "did not prove the shared secret"]));
    assert!(open.logged(&["peer link refused", "no --peer-secret"]));
    for (server, expect) in [
        (&wrong, "authentication failed"),
        (&dialer, "403 Forbidden"),
    ] {
        let (_, body) = concord_tests::http_get(&server.http_url("/api/status")).await;
        let s: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let p = &s["peers"][0];
        assert_eq!(p["connected"], false, "{s}");
        assert!(
            p["last_error"].as_str().unwrap_or("").contains(expect),
            "{s}"
        );
    }
    // Nothing crossed: an edit on the good node stays there.
    let cl = YClient::connect(&good.ws_url("secret")).await;
    cl.append("t", "private");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(concord_tests::server_doc(&wrong, "secret").await.is_none());

    // --peers without --peer-secret does not start at all.
    let out = std::process::Command::new(concord_tests::concord_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--peers",
            "http://127.0.0.1:1",
        ])
        .arg("--data-dir")
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--peers needs --peer-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_peers_with_cursor_and_backlog() {
    let c = Cluster::start(2, &mesh(2), LINK, &[]).await;
    c.wait_linked(&mesh(2)).await;
    let a = YClient::connect(&c.nodes[0].ws_url("st")).await;
    for i in 0..5 {
        a.append("t", &i.to_string());
    }
    c.wait_converged("st", CONVERGE).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.status(0).await;
        let p = &s["peers"].as_array().unwrap()[0];
        assert_eq!(s["node_id"], "node-0");
        assert_eq!(s["region"], "r0");
        assert_eq!(p["node_id"], "node-1");
        assert_eq!(p["region"], "r1");
        assert_eq!(p["connected"], true);
        assert!(p["last_contact_ago_ms"].as_u64().unwrap() < 5000);
        if p["acked_seq"] == s["committed_seq"]
            && p["backlog"] == 0
            && s["committed_seq"].as_u64().unwrap() >= 5
        {
            break;
        }
        assert!(Instant::now() < deadline, "backlog never drained: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A dead peer shows up as disconnected, with its backlog growing.
    c.cut(0, 1);
    for i in 0..3 {
        a.append("t", &format!("+{i}"));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = c.status(0).await;
        let p = &s["peers"].as_array().unwrap()[0];
        if p["connected"] == false && p["backlog"].as_u64().unwrap() >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "cut link not reported: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(c.nodes[0].logged(&["peer link down", "node-1"]));
    let before = c.status(0).await["peers"][0].clone();

    // Restarted while its peer is still unreachable, the node still knows who the peer is, what
    // it acknowledged and how far behind it is.
    let mut c = c;
    c.nodes[0].sigterm().await;
    c.nodes[0].restart().await;
    c.aim_proxies();
    let s = c.status(0).await;
    let peers = s["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1, "{s}");
    let p = &peers[0];
    assert_eq!(p["node_id"], "node-1", "{s}");
    assert_eq!(p["region"], "r1", "{s}");
    assert_eq!(p["connected"], false, "{s}");
    // Before the restart the peer had acknowledged at least the five first edits; the cursor is
    // kept on disk, and nothing more can have been acknowledged since (the link is cut).
    let acked = before["acked_seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no acked_seq before the restart: {before}"));
    assert!(
        acked >= 5,
        "peer acknowledged only {acked} before the restart: {before}"
    );
    assert_eq!(p["acked_seq"].as_u64(), Some(acked), "{s}");
    assert_eq!(p["backlog"], before["backlog"], "{s}");
    let _ = assert_contains;
}

/// A peer that is gone for good pins the log (its unacknowledged entries are kept for it) until
/// it is forgotten; then compaction may drop them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_a_dead_peer_lets_the_log_shrink() {
    let mut c = Cluster::start(2, &mesh(2), LINK, &["--compact-after-updates", "5"]).await;
    c.wait_linked(&mesh(2)).await;
    let a = YClient::connect(&c.nodes[0].ws_url("gone")).await;
    a.append("t", "seen by both ");
    c.wait_converged("gone", CONVERGE).await;
    c.nodes[1].kill9().await;
    for i in 0..12 {
        a.append("t", &format!("<{i}>"));
    }
    let log_rows = |dir: &std::path::Path| -> i64 {
        let db = rusqlite::Connection::open(dir.join("concord.db")).unwrap();
        db.query_row("SELECT COUNT(*) FROM log", [], |r| r.get(0))
            .unwrap()
    };
    let dir = c.nodes[0].data_dir.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while log_rows(&dir) < 12 {
        assert!(Instant::now() < deadline, "edits not stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Compactions ran (every 5 updates), yet the entries node-1 never acknowledged stay.
    let kept = log_rows(&dir);
    assert!(kept >= 12, "kept {kept} entries");

    let out = std::process::Command::new(concord_tests::concord_bin())
        .args(["forget-peer", "node-1", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("forgot peer node-1"));
    // The next compaction drops what only node-1 was waiting for.
    for i in 0..5 {
        a.append("t", &format!("[{i}]"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while log_rows(&dir) >= 5 {
        assert!(
            Instant::now() < deadline,
            "log still holds {} entries after forgetting the peer",
            log_rows(&dir)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing was lost: the document has every edit.
    let text = concord_tests::server_doc(&c.nodes[0], "gone")
        .await
        .unwrap()
        .text("t")
        .unwrap();
    assert!(text.contains("<11>") && text.contains("[4]"), "{text}");
}
