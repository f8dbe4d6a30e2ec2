//! Replication resumes from what the receiving node really holds (issue 12, D4): a node that
//! comes back wiped, or restored from an older backup, under the same node id gets its history
//! back; a node restored from a backup keeps replicating its new writes; a peer that was sent
//! everything is not sent every snapshot again on each reconnect. Plus the store's side of it:
//! incarnations, received cursors, and databases from before them.
//!
//! Where a test needs no document live on a node (the state-vector exchange repairs live
//! documents, which would hide a wrong resume point), that node is restarted first.

use std::path::Path;
use std::time::{Duration, Instant};

use concord_server::store::Store;
use concord_server::store::sqlite::{SCHEMA, SqliteOptions, SqliteStore, forget_peer};
use concord_tests::cluster::{Cluster, SECRET, mesh};
use concord_tests::{Server, YClient, http_get};

const LINK: Duration = Duration::from_millis(20);
const CATCH_UP: Duration = Duration::from_secs(30);

/// The text root `t` of `doc` on `node`, committed (`None`: 404, never written there).
async fn text_on(node: &Server, doc: &str) -> Option<String> {
    let (status, body) = http_get(&node.http_url(&format!("/api/docs/{doc}/text/t"))).await;
    match status {
        200 => Some(String::from_utf8(body).unwrap()),
        404 => None,
        other => panic!("GET text of {doc}: {other}"),
    }
}

/// Waits until `doc` on `node` reads `expected`.
async fn wait_text_on(node: &Server, doc: &str, expected: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let text = text_on(node, doc).await;
        if text.as_deref() == Some(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{doc} on {} reads {text:?} after {within:?}, expected {expected:?}",
            node.addr
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client on `node` appends `s` to `doc`; returns once the node has committed it.
async fn write(node: &Server, doc: &str, s: &str) {
    let w = YClient::connect(&node.ws_url(doc)).await;
    w.append("t", s);
    let expected = w.text("t");
    wait_text_on(node, doc, &expected, Duration::from_secs(10)).await;
}

/// Writes `s` to each of `docs` on node `i` and waits until every node holds them.
async fn write_all(c: &Cluster, i: usize, docs: &[String], s: &str) {
    for d in docs {
        write(&c.nodes[i], d, s).await;
    }
    for d in docs {
        c.wait_converged(d, CATCH_UP).await;
    }
}

fn docs(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|d| format!("{prefix}/{d}")).collect()
}

/// Empties a data dir (the database, its WAL and shared memory).
fn wipe(dir: &Path) {
    for f in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
}

/// Copies the files of data dir `from` into `to` (a stopped node's backup or restore).
fn copy_files(from: &Path, to: &Path) {
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
    }
}

/// Restarts node `i` (cleanly) so that none of its documents is live.
async fn restart(c: &mut Cluster, i: usize) {
    c.nodes[i].sigterm().await;
    c.nodes[i].restart().await;
    c.aim_proxies();
}

/// Every document a node held is back on it after it was wiped and restarted with the same
/// node id. Before the fix its peer kept its cursor for that id (`acked 480, backlog 0`) and
/// streamed nothing: all of them stayed 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_gets_every_document_back() {
    let mut c = Cluster::start(2, &mesh(2), LINK, &[]).await;
    c.wait_linked(&mesh(2)).await;
    let docs = docs("wipe", 12);
    for round in 0..3 {
        write_all(&c, 0, &docs, &format!("<{round}>")).await;
    }
    c.nodes[1].kill9().await;
    wipe(&c.nodes[1].data_dir);
    restart(&mut c, 0).await;
    c.nodes[1].restart().await;
    c.aim_proxies();
    c.wait_linked(&mesh(2)).await;
    for d in &docs {
        wait_text_on(&c.nodes[1], d, "<0><1><2>", CATCH_UP).await;
    }
}

/// A node restored from a backup gets what was written after the backup, though it had
/// acknowledged it before the restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restored_from_a_backup_gets_what_it_lost() {
    let mut c = Cluster::start(2, &mesh(2), LINK, &[]).await;
    c.wait_linked(&mesh(2)).await;
    let old = docs("backup/old", 4);
    let new = docs("backup/new", 4);
    write_all(&c, 0, &old, "before ").await;

    let backup = tempfile::tempdir().unwrap();
    c.nodes[1].sigterm().await;
    copy_files(&c.nodes[1].data_dir, backup.path());
    c.nodes[1].restart().await;
    c.aim_proxies();
    c.wait_linked(&mesh(2)).await;
    write_all(&c, 0, &old, "after").await;
    write_all(&c, 0, &new, "after").await;

    c.nodes[1].kill9().await;
    wipe(&c.nodes[1].data_dir);
    copy_files(backup.path(), &c.nodes[1].data_dir);
    restart(&mut c, 0).await;
    c.nodes[1].restart().await;
    c.aim_proxies();
    c.wait_linked(&mesh(2)).await;
    for d in &old {
        wait_text_on(&c.nodes[1], d, "before after", CATCH_UP).await;
    }
    for d in &new {
        wait_text_on(&c.nodes[1], d, "after", CATCH_UP).await;
    }
}

/// The sending node is the one restored from a backup: it numbers its new writes with sequences
/// its peer already received (from the lost future), and the peer must not take them for known.
/// (This passed before the fix too, which went by the sender's own restored cursor; it guards the
/// resume rule against trusting the peer's stale claim.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_restored_from_a_backup_keeps_replicating_its_new_writes() {
    let mut c = Cluster::start(2, &mesh(2), LINK, &[]).await;
    c.wait_linked(&mesh(2)).await;
    let first = docs("reverse/first", 3);
    write_all(&c, 0, &first, "one ").await;

    let backup = tempfile::tempdir().unwrap();
    c.nodes[0].sigterm().await;
    copy_files(&c.nodes[0].data_dir, backup.path());
    c.nodes[0].restart().await;
    c.aim_proxies();
    c.wait_linked(&mesh(2)).await;
    // Written, replicated, then lost with the restore below (the peer keeps them).
    let lost = docs("reverse/lost", 3);
    write_all(&c, 0, &lost, "lost").await;

    c.nodes[0].sigterm().await;
    wipe(&c.nodes[0].data_dir);
    copy_files(backup.path(), &c.nodes[0].data_dir);
    c.nodes[0].restart().await;
    c.aim_proxies();
    c.wait_linked(&mesh(2)).await;
    // Same sequence numbers as the lost writes, different updates.
    let again = docs("reverse/again", 3);
    for d in first.iter().chain(&again) {
        write(&c.nodes[0], d, "two").await;
    }
    for d in &first {
        wait_text_on(&c.nodes[1], d, "one two", CATCH_UP).await;
    }
    for d in &again {
        wait_text_on(&c.nodes[1], d, "two", CATCH_UP).await;
    }
}

/// The `sent_bytes` node 0's status shows for its peer `node-1`.
async fn sent_to_node1(node0: &Server) -> (u64, u64) {
    let (_, body) = http_get(&node0.http_url("/api/status")).await;
    let s: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let p = s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node_id"] == "node-1")
        .cloned()
        .unwrap_or_default();
    (
        p["sent_bytes"].as_u64().unwrap_or(0),
        p["acked_seq"].as_u64().unwrap_or(0),
    )
}

/// A node whose whole log was compacted away before it had any peer has only snapshots to send.
/// Its peer acknowledges no log entry, and before the fix it got every snapshot again on each
/// reconnect; now it records that it holds the log through its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_was_sent_everything_is_not_sent_the_snapshots_again() {
    let alone = [
        "--region",
        "r0",
        "--node-id",
        "node-0",
        "--peer-secret",
        SECRET,
        "--compact-after-bytes",
        "1",
    ];
    let a = Server::start(&alone).await;
    let docs = docs("snap", 6);
    let big = "s".repeat(8 * 1024);
    for d in &docs {
        write(&a, d, &big).await;
    }
    // Every entry was compacted into its snapshot and deleted (no peer was waiting for it).
    let db = rusqlite::Connection::open(a.data_dir.join("concord.db")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (log, snapshots): (i64, i64) = db
            .query_row(
                "SELECT (SELECT COUNT(*) FROM log), (SELECT COUNT(snapshot) FROM docs)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        if log == 0 && snapshots == 6 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "log {log}, snapshots {snapshots}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let peers = format!("http://{}", a.addr);
    let mut b = Server::start(&[
        "--region",
        "r1",
        "--node-id",
        "node-1",
        "--peer-secret",
        SECRET,
        "--peers",
        &peers,
    ])
    .await;
    for d in &docs {
        wait_text_on(&b, d, &big, CATCH_UP).await;
    }
    let deadline = Instant::now() + CATCH_UP;
    while !a.logged(&["sent every stored snapshot", "node-1"]) {
        assert!(Instant::now() < deadline, "no snapshots sent to node-1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (first, _) = sent_to_node1(&a).await;
    assert!(first >= 6 * 8 * 1024, "sent {first} bytes");

    // Reconnect; then one new entry, which the stream sends after any snapshots: once node-1
    // has acknowledged it, everything this link will ever send before it has been counted.
    b.kill9().await;
    b.restart().await;
    write(&a, "snap/marker", "m").await;
    let (_, body) = http_get(&a.http_url("/api/status")).await;
    let committed = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["committed_seq"]
        .as_u64()
        .unwrap();
    let deadline = Instant::now() + CATCH_UP;
    let (second, _) = loop {
        let (sent, acked) = sent_to_node1(&a).await;
        if acked >= committed {
            break (sent, acked);
        }
        assert!(
            Instant::now() < deadline,
            "node-1 acknowledged {acked} of {committed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let again = second - first;
    assert!(
        again < 8 * 1024,
        "{again} bytes sent on reconnect: the snapshots went again"
    );
    let times = a
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("sent every stored snapshot"))
        .count();
    assert_eq!(times, 1, "snapshots sent {times} times");
    wait_text_on(&b, "snap/marker", "m", CATCH_UP).await;
}

fn options() -> SqliteOptions {
    SqliteOptions::default()
}

/// Each open starts an incarnation numbering from the next sequence; the history survives
/// restarts, in order, even when an open wrote nothing.
#[tokio::test]
async fn every_open_starts_a_new_incarnation() {
    let dir = tempfile::tempdir().unwrap();
    let doc = concord_crdt::DocName::parse("d").unwrap();
    let update = {
        use concord_crdt::yrs::{Doc, Text, Transact, WriteTxn};
        let d = Doc::new();
        let mut txn = d.transact_mut();
        txn.get_or_insert_text("t").insert(&mut txn, 0, "x");
        txn.encode_update_v1()
    };
    let mut seen = Vec::new();
    for writes in [2u64, 0, 1] {
        let store = SqliteStore::open(dir.path(), options()).unwrap();
        for _ in 0..writes {
            store
                .append(concord_server::store::Append {
                    doc: doc.clone(),
                    update: update.clone().into(),
                    origin: None,
                })
                .await
                .unwrap()
                .await
                .unwrap()
                .unwrap();
        }
        let history = store.incarnations();
        assert_eq!(&history[..seen.len()], &seen[..], "history is kept");
        seen = history;
        store.close().await;
    }
    let firsts: Vec<u64> = seen.iter().map(|i| i.first_seq).collect();
    assert_eq!(firsts, [1, 3, 3]);
    let ids: std::collections::HashSet<_> = seen.iter().map(|i| i.id).collect();
    assert_eq!(ids.len(), 3, "fresh ids");
}

/// A database created before incarnations and received cursors opens (the tables are added);
/// its peers are sent the snapshots once, as they hold no claim yet. `forget-peer` drops the
/// received cursor too.
#[tokio::test]
async fn an_older_database_opens_and_records_received_cursors() {
    let dir = tempfile::tempdir().unwrap();
    {
        let old = rusqlite::Connection::open(dir.path().join("concord.db")).unwrap();
        old.execute_batch(SCHEMA).unwrap();
        old.execute(
            "INSERT INTO peer_cursors (node_id, acked_seq) VALUES ('peer', 0)",
            [],
        )
        .unwrap();
    }
    let store = SqliteStore::open(dir.path(), options()).unwrap();
    let peer = concord_crdt::NodeId::parse("peer").unwrap();
    assert_eq!(store.received_cursor(&peer).await.unwrap(), None);
    let of = concord_crdt::replication::Incarnation([9; 16]);
    for seq in [5, 3] {
        store
            .set_received_cursor(&peer, of, seq)
            .await
            .unwrap()
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(store.received_cursor(&peer).await.unwrap(), Some((of, 3)));
    assert!(store.log_complete_after(0).await.unwrap());
    store
        .reset_peer_cursor(&peer, 0)
        .await
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    store.close().await;
    let db = rusqlite::Connection::open(dir.path().join("concord.db")).unwrap();
    db.execute("DELETE FROM peer_cursors", []).unwrap();
    db.execute("DELETE FROM peers", []).unwrap();
    assert!(
        forget_peer(dir.path(), "peer").unwrap(),
        "the received cursor counts as known"
    );
    let left: i64 = db
        .query_row("SELECT COUNT(*) FROM received_cursors", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0);
}

/// Presence is relayed to every registered link the moment it changes. A link must still open
/// with `Resume`: while cursors are being read at link-up, people keep moving their cursors, and
/// a link whose first message was their presence used to be refused (1002) and redialed, over
/// and over on a busy node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_come_up_while_presence_streams_through_them() {
    let c = Cluster::start(2, &mesh(2), Duration::ZERO, &[]).await;
    c.wait_linked(&mesh(2)).await;
    let doc = "presence/busy";
    let mut clients = Vec::new();
    for i in 0..2 {
        let cl = YClient::connect(&c.nodes[i].ws_url(doc)).await;
        clients.push(cl);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut movers = Vec::new();
    for cl in clients {
        let stop = stop.clone();
        movers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                cl.set_presence(&format!(r#"{{"cursor":{n}}}"#));
                n += 1;
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        }));
    }
    for _ in 0..5 {
        c.cut(0, 1);
        c.heal(0, 1);
        c.wait_linked(&mesh(2)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for m in movers {
        m.await.unwrap();
    }
    for node in &c.nodes {
        assert!(
            !node.logged(&["other than Resume"]),
            "a link was refused because presence overtook its Resume"
        );
    }
}
