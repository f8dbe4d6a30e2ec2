//! Durable storage, through the real binary: nothing relayed is lost, stored documents come back,
//! compaction and eviction work, and failures never turn into empty documents or false success.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use concord_crdt::{ClientMessage, decode_frame};
use concord_tests::{Server, WAIT, YClient, assert_contains, http_get, server_doc};

fn db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("concord.db")).unwrap()
}

/// Writes `n` chunks into `doc`'s text `t` from a fresh client and returns once the server has
/// sent every one of those updates back to it. A room relays an accepted update, as received, to
/// every member, its sender included, and (in sync durability) only once it is committed; the
/// client's own text proves nothing, as it holds its edits at once. So what `write` returns on
/// was relayed, and the tests that use it assert that what was relayed is durable.
async fn write(server: &Server, doc: &str, n: usize, chunk: &str) -> YClient {
    let c = YClient::connect(&server.ws_url(doc)).await;
    let sent: Vec<Vec<u8>> = (0..n).map(|_| c.append_sent("t", chunk)).collect();
    // A room relays one client's updates in order: the last echo comes last.
    let last = sent.last().expect("write at least one chunk");
    let r = c.wait_for(WAIT, |s| s.echoed(last)).await;
    assert!(
        r.is_ok(),
        "{doc}: the server did not relay the last of {n} updates"
    );
    let echoed: HashSet<Vec<u8>> = c.frames().into_iter().collect();
    let missing = sent.iter().filter(|f| !echoed.contains(*f)).count();
    assert_eq!(
        missing, 0,
        "{doc}: {missing} of {n} updates were never relayed"
    );
    c
}

/// Whatever the server relayed is on disk: `kill -9` the moment the last echo arrives loses none
/// of it (sync durability commits before relaying).
#[tokio::test]
async fn kill_9_right_after_the_echo_loses_nothing() {
    let mut server = Server::start(&[]).await;
    let docs = ["echoed/a", "echoed/b", "echoed/c"];
    let writes = docs.map(|doc| write(&server, doc, 40, "echo "));
    let clients = futures_util::future::join_all(writes).await;
    server.kill9().await;
    drop(clients);

    server.restart().await;
    for doc in docs {
        let stored = server_doc(&server, doc)
            .await
            .unwrap_or_else(|| panic!("{doc}: relayed, yet missing after kill -9"));
        assert_eq!(
            stored.text("t").unwrap_or_default(),
            "echo ".repeat(40),
            "{doc}: relayed updates lost by kill -9"
        );
    }
}

/// Sync durability relays an update (to its sender too) only once it is committed: the moment
/// each echo arrives, the database file already holds that update. One update at a time, so a
/// server relaying before its commit is caught at the first echo that outruns it.
#[tokio::test]
async fn every_echo_finds_its_update_already_committed() {
    let server = Server::start(&[]).await;
    let c = YClient::connect(&server.ws_url("committed")).await;
    let db = rusqlite::Connection::open_with_flags(
        server.data_dir.join("concord.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stored = db
        .prepare("SELECT COUNT(*) FROM log WHERE data = ?1")
        .unwrap();
    for i in 0..40 {
        let frame = c.append_sent("t", &format!("<{i}>"));
        c.wait(|s| s.echoed(&frame)).await;
        let update = match &decode_frame(&frame).unwrap()[..] {
            [ClientMessage::Update(u)] => u.bytes.clone(),
            other => panic!("not an update frame: {other:?}"),
        };
        let rows: i64 = stored.query_row([update], |r| r.get(0)).unwrap();
        assert_eq!(rows, 1, "update {i} was relayed before it was committed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_that_was_relayed() {
    let mut server = Server::start(&[]).await;
    let docs = ["crash/a", "crash/b", "crash/c", "crash/d"];
    let stop = Arc::new(AtomicBool::new(false));
    let mut watchers = Vec::new();
    let mut writers = Vec::new();
    for doc in docs {
        watchers.push(YClient::connect(&server.ws_url(doc)).await);
        for w in 0..2 {
            let c = YClient::connect(&server.ws_url(doc)).await;
            let stop = stop.clone();
            writers.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    c.append("t", &format!("[{w}:{i}]"));
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
    }
    // Let it run, then pull the plug mid-stream.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9().await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    for w in &watchers {
        w.wait_closed().await;
    }

    server.restart().await;
    for (doc, watcher) in docs.iter().zip(&watchers) {
        let seen = watcher.text("t");
        assert!(
            seen.matches('[').count() > 50,
            "{doc}: the watcher saw too little for the test to mean anything"
        );
        let mut stored = server_doc(&server, doc)
            .await
            .expect("document missing after restart");
        assert_contains(&mut stored, &watcher.encoded_state(), doc);
        // And a client reconnecting sees at least as much.
        let c = YClient::connect(&server.ws_url(doc)).await;
        assert!(c.text("t").len() >= seen.len());
    }
}

#[tokio::test]
async fn a_clean_restart_serves_the_stored_document() {
    let mut server = Server::start(&[]).await;
    write(&server, "restart/doc", 30, "hello ").await;
    let c = YClient::connect(&server.ws_url("restart/doc")).await;
    c.set("m", "k", "v");
    c.wait(|s| s.frames.iter().filter(|f| f.starts_with(&[0, 2])).count() >= 1)
        .await;
    let status = server.sigterm().await;
    assert!(status.success());

    server.restart().await;
    let c = YClient::connect(&server.ws_url("restart/doc")).await;
    assert_eq!(c.text("t"), "hello ".repeat(30));
    assert_eq!(c.map_get("m", "k").as_deref(), Some("v"));
    let (status, body) = http_get(&server.http_url("/api/docs/restart/doc/text/t")).await;
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8(body).unwrap(), "hello ".repeat(30));
}

#[tokio::test]
async fn compaction_replaces_the_log_with_a_snapshot_and_round_trips() {
    let mut server = Server::start(&["--compact-after-updates", "20"]).await;
    let _c = write(&server, "compact", 205, "ab").await;
    // An encoded document (the default) compacts after merging off its room's task: the last
    // compaction may still be on its way when the last echo arrives.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (snapshot, log_rows): (Option<Vec<u8>>, i64) = db(&server.data_dir)
            .query_row(
                "SELECT snapshot, (SELECT COUNT(*) FROM log WHERE doc_id = docs.id) FROM docs WHERE name = 'compact'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        if snapshot.is_some() && log_rows < 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "snapshot written: {}; {log_rows} log rows left after compaction",
            snapshot.is_some()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    server.restart().await;
    let c = YClient::connect(&server.ws_url("compact")).await;
    assert_eq!(c.text("t"), "ab".repeat(205));
}

/// An encoded document's compaction merges it off the room's task while updates keep coming,
/// and stores the merge as the snapshot of the log only up to where the merge began: what arrived
/// during it stays in the log. A restart then serves everything the server relayed. (Compacting
/// the whole log with that snapshot loses the updates accepted during each merge.)
#[tokio::test]
async fn updates_accepted_while_a_compaction_merges_survive_a_restart() {
    let mut server = Server::start(&[
        "--doc-mode",
        "encoded",
        "--compact-after-updates",
        "40",
        "--compact-after-bytes",
        "2048",
    ])
    .await;
    let doc = "merging";
    // Words typed at random places: enough items that each merge takes a while.
    let sample = concord_crdt::sample::typed_document("t", 100_000, 7);
    let seed = YClient::connect(&server.ws_url(doc)).await;
    let frame = concord_crdt::encode::update(&sample);
    seed.send(frame.clone());
    let relayed = seed.wait_for(WAIT, |s| s.echoed(&frame)).await;
    assert!(relayed.is_ok(), "the sample document was not relayed");
    // Fewer than a member's queue (512): a client slow to read under load is not dropped.
    let c = write(&server, doc, 400, "ab").await;
    let expected = c.text("t");
    assert!(expected.len() > 100_000);
    let status: serde_json::Value =
        serde_json::from_slice(&http_get(&server.http_url("/api/status")).await.1).unwrap();
    drop((seed, c));

    server.restart().await;
    let fresh = YClient::connect(&server.ws_url(doc)).await;
    assert_eq!(fresh.text("t"), expected, "after a restart ({status})");
}

#[tokio::test]
async fn read_api_serves_live_and_stored_documents_and_404s_unknown_ones() {
    // Debug logging: the room logs its eviction, which this test must see happen.
    let server = Server::start_logging("concord_server=debug", &["--evict-after", "200ms"]).await;
    let (status, _) = http_get(&server.http_url("/api/docs/never/written/update")).await;
    assert_eq!(status, 404);
    let (status, _) = http_get(&server.http_url("/api/docs/never/text/t")).await;
    assert_eq!(status, 404);

    let c = write(&server, "api/doc", 3, "xyz").await;
    // live
    assert_eq!(live_documents(&server).await, 1);
    let (status, body) = http_get(&server.http_url("/api/docs/api/doc/text/t")).await;
    assert_eq!(
        (status, String::from_utf8(body).unwrap()),
        (200, "xyzxyzxyz".to_string())
    );
    let live = server_doc(&server, "api/doc").await.unwrap();
    assert_eq!(live.text("t").as_deref(), Some("xyzxyzxyz"));
    // stored only: close, and wait until the room has really been evicted
    drop(c);
    let evicted = server
        .wait_logged(&["evicted idle document", "doc=api/doc"], 1, WAIT)
        .await;
    assert!(evicted.is_ok(), "api/doc was never evicted");
    assert_eq!(live_documents(&server).await, 0, "evicted, yet still live");
    let stored = server_doc(&server, "api/doc").await.unwrap();
    assert_eq!(stored.text("t").as_deref(), Some("xyzxyzxyz"));
    let (status, body) = http_get(&server.http_url("/api/docs/api/doc/text/missing-root")).await;
    assert_eq!((status, body.len()), (200, 0));
    // Reads of a stored document come from the store: they bring no room back.
    assert_eq!(live_documents(&server).await, 0);
}

/// `documents` in `/api/status`: how many documents are live (have a room).
async fn live_documents(server: &Server) -> u64 {
    let (_, body) = http_get(&server.http_url("/api/status")).await;
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    status["documents"]
        .as_u64()
        .expect("documents in /api/status")
}

#[tokio::test]
async fn a_failed_load_creates_no_empty_document_and_leaves_the_data_intact() {
    let mut server = Server::start(&[]).await;
    write(&server, "load/good", 5, "good ").await;
    write(&server, "load/bad", 5, "bad ").await;
    assert!(server.sigterm().await.success());

    // Corrupt one stored update of `load/bad`.
    let (rowid, original): (i64, Vec<u8>) = db(&server.data_dir)
        .query_row(
            "SELECT seq, data FROM log WHERE doc_id = (SELECT id FROM docs WHERE name = 'load/bad') ORDER BY seq LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let rows_of_bad = |dir: &Path| -> Vec<(i64, Vec<u8>)> {
        let c = db(dir);
        let mut q = c.prepare("SELECT seq, data FROM log WHERE doc_id = (SELECT id FROM docs WHERE name = 'load/bad') ORDER BY seq").unwrap();
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    db(&server.data_dir)
        .execute(
            "UPDATE log SET data = X'FFFFFFFF0102' WHERE seq = ?1",
            [rowid],
        )
        .unwrap();
    let before = rows_of_bad(&server.data_dir);

    server.restart().await;
    // Connections to the broken document are refused with 1011 and the cause...
    for _ in 0..3 {
        let c = YClient::connect_raw(&server.ws_url("load/bad")).await;
        let (code, reason) = c.wait_closed().await;
        assert_eq!(code, 1011, "{reason}");
        assert!(reason.contains("corrupt"), "{reason}");
    }
    let (status, _) = http_get(&server.http_url("/api/docs/load/bad/update")).await;
    assert_eq!(status, 500);
    assert!(server.logged(&["document load failed", "load/bad"]));
    // ...the other documents work...
    let good = YClient::connect(&server.ws_url("load/good")).await;
    assert_eq!(good.text("t"), "good ".repeat(5));
    // ...and nothing was written over the stored data.
    assert_eq!(rows_of_bad(&server.data_dir), before);
    let snapshot: Option<Vec<u8>> = db(&server.data_dir)
        .query_row(
            "SELECT snapshot FROM docs WHERE name = 'load/bad'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(snapshot.is_none());

    // Repaired on disk, the document loads in full: it was never shadowed by an empty one.
    db(&server.data_dir)
        .execute(
            "UPDATE log SET data = ?2 WHERE seq = ?1",
            rusqlite::params![rowid, original],
        )
        .unwrap();
    let c = YClient::connect(&server.ws_url("load/bad")).await;
    assert_eq!(c.text("t"), "bad ".repeat(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_closes_connections_and_never_reports_success() {
    let mut server = Server::start(&["--max-db-size", "400000"]).await;
    let watcher = YClient::connect(&server.ws_url("full")).await;
    let writer = YClient::connect(&server.ws_url("full")).await;
    let chunk = "z".repeat(8 * 1024);
    let mut closed = None;
    for _ in 0..200 {
        writer.append("t", &chunk);
        tokio::time::sleep(Duration::from_millis(5)).await;
        if let Some(c) = writer.closed() {
            closed = Some(c);
            break;
        }
    }
    let (code, reason) = match closed {
        Some(c) => c,
        None => writer.wait_closed().await,
    };
    assert_eq!(code, 1011, "{reason}");
    assert!(reason.contains("storage failure"), "{reason}");
    assert_eq!(watcher.wait_closed().await.0, 1011);
    assert!(server.logged(&["ERROR", "write failed", "doc=full"]));

    // Everything the watcher was shown is on disk.
    server.restart().await;
    let mut stored = server_doc(&server, "full").await.expect("stored document");
    assert!(
        watcher.text("t").len() >= 8 * 1024,
        "the watcher saw nothing before the disk filled"
    );
    assert_contains(&mut stored, &watcher.encoded_state(), "full");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicting_idle_documents_frees_their_memory() {
    let server = Server::start(&["--evict-after", "200ms"]).await;
    let content = "m".repeat(20 * 1024);
    // Warm up allocator arenas and the runtime first, so the baseline is comparable.
    drop(write(&server, "warm", 1, &content).await);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let base = server.rss_kib();

    let mut open = Vec::new();
    for batch in 0..20 {
        let clients = futures_util::future::join_all((0..50).map(|i| {
            let url = server.ws_url(&format!("mem/{batch}/{i}"));
            let content = content.clone();
            async move {
                let c = YClient::connect(&url).await;
                c.append("t", &content);
                c.wait(|s| s.frames.iter().any(|f| f.starts_with(&[0, 2])))
                    .await;
                c
            }
        }))
        .await;
        open.extend(clients);
    }
    let peak = server.rss_kib();
    drop(open);
    let mut docs = serde_json::Value::Null;
    for _ in 0..100 {
        let (_, body) = http_get(&server.http_url("/api/status")).await;
        docs = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["documents"].clone();
        if docs == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(docs, 0, "documents were not evicted");
    // Freed memory is handed back to the OS at most a second after the evictions.
    let target = base + (peak - base) / 3;
    let mut after = server.rss_kib();
    for _ in 0..50 {
        if after < target {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = server.rss_kib();
    }
    eprintln!("RSS KiB: base {base}, with 1000 documents {peak}, after eviction {after}");
    assert!(
        peak > base + 20_000,
        "1000 documents of 20 KiB should cost memory (base {base}, peak {peak})"
    );
    assert!(
        after < target,
        "memory did not return: base {base} KiB, peak {peak} KiB, after eviction {after} KiB"
    );
}
