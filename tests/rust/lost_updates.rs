//! Regression tests for the ways Concord used to lose updates, through the real binary and real
//! sockets: out-of-order updates from one author (D2), a client's last update before it closes
//! (D3), a catch-up into a receiver whose rooms come and go (D1), and a client's normal close
//! being answered with its own code.
//!
//! The in-process counterparts, deterministic, are in `server/tests/room_effects.rs` and in the
//! unit tests of `crdt/src/doc.rs`.

use std::time::Duration;

use concord_crdt::encode;
use concord_crdt::yrs::{Doc, Text, Transact, WriteTxn};
use concord_tests::cluster::{Cluster, mesh};
use concord_tests::{Server, YClient, http_get};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

async fn http_text(server: &Server, doc: &str) -> String {
    stored_text(server, doc)
        .await
        .unwrap_or_else(|| panic!("{doc} was never written"))
}

/// The committed text of `doc`, `None` while it was never written (404).
async fn stored_text(server: &Server, doc: &str) -> Option<String> {
    let (status, body) = http_get(&server.http_url(&format!("/api/docs/{doc}/text/t"))).await;
    match status {
        200 => Some(String::from_utf8(body).unwrap()),
        404 => None,
        _ => panic!("{doc}: {status} {}", String::from_utf8_lossy(&body)),
    }
}

/// One author's keystrokes as separate updates, each depending on the one before.
fn keystrokes(s: &str) -> Vec<Vec<u8>> {
    let author = Doc::new();
    s.chars()
        .map(|c| {
            let mut txn = author.transact_mut();
            let t = txn.get_or_insert_text("t");
            let len = t.len(&txn);
            t.insert(&mut txn, len, &c.to_string());
            txn.encode_update_v1()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_close_is_answered_with_its_own_code() {
    let server = Server::start(&[]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("close/echo"))
        .await
        .unwrap();
    ws.send(Message::Close(Some(CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(frame)) => return Some(frame.map(|f| u16::from(f.code))),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("the server answered the close");
    assert_eq!(
        answer,
        Some(Some(1000)),
        "the close was not echoed with 1000"
    );
}

/// D2: three keystrokes of one author sent in orders where the first arrives last. Every one
/// must be stored and relayed: a watching client and the stored document after a restart both
/// end with the whole text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_keystrokes_are_all_stored_and_relayed() {
    let mut server = Server::start(&[]).await;
    let keys = keystrokes("abc");
    let orders: [[usize; 3]; 3] = [[1, 2, 0], [2, 1, 0], [2, 0, 1]];
    for (k, order) in orders.iter().enumerate() {
        let doc = format!("order/{k}");
        let watcher = YClient::connect(&server.ws_url(&doc)).await;
        let sender = YClient::connect_raw(&server.ws_url(&doc)).await;
        for &i in order {
            sender.send(encode::update(&keys[i]));
        }
        watcher.wait_text("t", "abc").await;
        assert_eq!(http_text(&server, &doc).await, "abc", "order {order:?}");
    }
    server.restart().await;
    for (k, order) in orders.iter().enumerate() {
        let doc = format!("order/{k}");
        assert_eq!(
            http_text(&server, &doc).await,
            "abc",
            "stored, order {order:?}"
        );
    }
}

/// D3: clients that type one token and close at once, four at a time on one document. Every
/// token must be stored: it is the user's last keystroke before closing the tab.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_closing_right_after_typing_lose_nothing() {
    const CLIENTS: usize = 4;
    const ROUNDS: usize = 100;
    let server = Server::start(&[]).await;
    let url = server.ws_url("closing/doc");
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            for r in 0..ROUNDS {
                let client = YClient::connect(&url).await;
                // Presence, as every y-websocket client sends: the room relays it at once, so
                // the others' sockets are written to while this one is closing.
                client.set_presence(&format!(r#"{{"user":"{c}.{r}"}}"#));
                client.append("t", &format!("<{c}.{r}>"));
                client.close();
                client.wait_closed().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let check = YClient::connect(&url).await;
    let text = check.text("t");
    let missing: Vec<String> = (0..CLIENTS)
        .flat_map(|c| (0..ROUNDS).map(move |r| format!("<{c}.{r}>")))
        .filter(|tok| !text.contains(tok.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "lost {} tokens: {missing:?}",
        missing.len()
    );
}

/// D1: a node catches up on thousands of updates while its rooms are evicted as soon as they
/// are idle, so the link keeps finding rooms that have just closed. Nothing may be acknowledged
/// without being stored. The sender's rooms are not live when the receiver reads, so no
/// state-vector repair can hide a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_into_rooms_that_keep_closing_loses_nothing() {
    const DOCS: usize = 3;
    const UPDATES: usize = 4_000;
    let c = Cluster::start(2, &mesh(2), Duration::ZERO, &["--evict-after", "1ms"]).await;
    c.wait_linked(&mesh(2)).await;
    c.cut(0, 1);
    let mut expected = Vec::new();
    for d in 0..DOCS {
        let doc = format!("churn/{d}");
        let w = YClient::connect(&c.nodes[0].ws_url(&doc)).await;
        for i in 0..UPDATES {
            w.append("t", &format!("{i},"));
            if i % 200 == 199 {
                committed(&c.nodes[0], &doc, &w.text("t"), &w).await;
            }
        }
        let text = w.text("t");
        committed(&c.nodes[0], &doc, &text, &w).await;
        drop(w);
        expected.push((doc, text));
    }
    c.heal(0, 1);
    // Node 0 waits until node 1 has acknowledged its whole log.
    node_1_acknowledged_everything(&c).await;
    for (doc, text) in &expected {
        let got = http_text(&c.nodes[1], doc).await;
        assert_eq!(
            got.len(),
            text.len(),
            "{doc}: node 1 acknowledged updates it lacks"
        );
        assert_eq!(&got, text);
    }
}

/// D1, the other way in: a node receives a peer's updates for a document it cannot load (a
/// damaged row). They must go to its log, every one, before they are acknowledged: the rooms
/// that refuse the document close their inbox one after another, and an update sent to one
/// that just closed used to be acknowledged without being stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_for_an_unloadable_document_are_all_stored_before_they_are_acknowledged() {
    const UPDATES: usize = 3_000;
    let doc = "broken/doc";
    let mut c = Cluster::start(2, &mesh(2), Duration::ZERO, &[]).await;
    c.wait_linked(&mesh(2)).await;
    let w = YClient::connect(&c.nodes[0].ws_url(doc)).await;
    w.append("t", "seed");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while http_get(&c.nodes[1].http_url(&format!("/api/docs/{doc}/text/t")))
        .await
        .0
        != 200
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "seed never reached node 1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Damage node 1's copy of the document while it is down.
    c.nodes[1].kill9().await;
    let damaged = rusqlite::Connection::open(c.nodes[1].data_dir.join("concord.db"))
        .unwrap()
        .execute(
            "UPDATE log SET data = X'FFFFFFFF' WHERE doc_id = (SELECT id FROM docs WHERE name = ?1)",
            [doc],
        )
        .unwrap();
    assert!(damaged >= 1);
    c.nodes[1].restart().await;
    c.aim_proxies();
    c.wait_linked(&mesh(2)).await;
    for i in 0..UPDATES {
        w.append("t", &format!("{i},"));
        if i % 200 == 199 {
            committed(&c.nodes[0], doc, &w.text("t"), &w).await;
        }
    }
    committed(&c.nodes[0], doc, &w.text("t"), &w).await;
    node_1_acknowledged_everything(&c).await;
    let stored: i64 = rusqlite::Connection::open(c.nodes[1].data_dir.join("concord.db"))
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM log WHERE doc_id = (SELECT id FROM docs WHERE name = ?1)",
            [doc],
            |r| r.get(0),
        )
        .unwrap();
    // The damaged row plus every update acknowledged since.
    assert!(
        stored > UPDATES as i64,
        "node 1 acknowledged {UPDATES} updates but stored {} of them",
        stored - 1
    );
}

/// Waits until `server` has committed `text` (the HTTP read answers committed state only).
async fn committed(server: &Server, doc: &str, text: &str, writer: &YClient) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stored = stored_text(server, doc).await.unwrap_or_default();
        if stored == text {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{doc} not committed: {} of {} bytes, writer closed: {:?}",
            stored.len(),
            text.len(),
            writer.closed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until node 0's status shows node 1 acknowledged its whole log.
async fn node_1_acknowledged_everything(c: &Cluster) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = c.status(0).await;
        let committed = status["committed_seq"].as_u64().unwrap();
        let acked = status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["node_id"] == "node-1" && p["acked_seq"].as_u64() == Some(committed));
        if acked {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 1 did not acknowledge everything: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
