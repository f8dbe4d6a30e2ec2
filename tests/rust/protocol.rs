//! The y-websocket protocol as unmodified Yjs clients rely on it, through real sockets against
//! the real binary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_crdt::encode;
use concord_crdt::yrs::StateVector;
use concord_tests::{Server, WAIT, YClient, http_get};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn handshake_sends_step1_and_answers_every_step1_with_a_step2() {
    let server = Server::start(&[]).await;
    let c = YClient::connect_raw(&server.ws_url("handshake")).await;
    c.wait(|s| !s.frames.is_empty()).await;
    assert_eq!(
        &c.frames()[0][..2],
        &[0, 0],
        "first frame must be the server's Step1"
    );

    // An empty document answers with an empty Step2, which is what marks the client synced.
    c.send(encode::sync_step1(&StateVector::default()));
    c.wait(|s| s.synced).await;
    let step2s = c.frames().iter().filter(|f| f.starts_with(&[0, 1])).count();
    assert_eq!(step2s, 1);

    // Every Step1 gets its own Step2.
    c.send(encode::sync_step1(&StateVector::default()));
    c.wait(|s| s.frames.iter().filter(|f| f.starts_with(&[0, 1])).count() == 2)
        .await;
}

#[tokio::test]
async fn handshake_includes_the_rooms_awareness_states() {
    let server = Server::start(&[]).await;
    let a = YClient::connect(&server.ws_url("presence-hello")).await;
    a.set_presence(r#"{"user":{"name":"ann"}}"#);
    a.wait(|s| s.frames.iter().any(|f| f.starts_with(&[1])))
        .await; // echo: the server has it

    let b = YClient::connect_raw(&server.ws_url("presence-hello")).await;
    b.wait(|s| s.frames.len() >= 2).await;
    let frames = b.frames();
    assert_eq!(&frames[0][..2], &[0, 0]);
    assert_eq!(frames[1][0], 1, "second frame must be the awareness states");
    b.wait(|s| s.presence_of(a.client_id()).is_some()).await;
    assert!(b.presence_of(a.client_id()).unwrap().contains("ann"));
}

#[tokio::test]
async fn two_clients_converge_on_text_and_map() {
    let server = Server::start(&[]).await;
    let a = YClient::connect(&server.ws_url("converge")).await;
    let b = YClient::connect(&server.ws_url("converge")).await;
    for i in 0..20 {
        a.append("t", &format!("a{i} "));
        b.append("t", &format!("b{i} "));
    }
    a.set("m", "colour", "red");
    b.set("m", "size", "L");
    a.wait(|s| s.map_get("m", "size").is_some()).await;
    b.wait(|s| s.map_get("m", "colour").is_some()).await;
    let text = a.text("t");
    b.wait_text("t", &text).await;
    a.wait_text("t", &b.text("t")).await;
    let text = a.text("t");
    for i in 0..20 {
        assert!(
            text.contains(&format!("a{i} ")) && text.contains(&format!("b{i} ")),
            "{text}"
        );
    }
    assert_eq!(a.map_get("m", "size").as_deref(), Some("L"));
    assert_eq!(b.map_get("m", "colour").as_deref(), Some("red"));
}

#[tokio::test]
async fn updates_are_echoed_to_their_sender() {
    let server = Server::start(&[]).await;
    let a = YClient::connect(&server.ws_url("echo")).await;
    a.append("t", "x");
    a.wait(|s| s.frames.iter().any(|f| f.starts_with(&[0, 2])))
        .await;
}

/// Fresh clients of one version of a document share one encoding of it (`full_states_encoded`
/// in `/api/status`), and an edit makes the next fresh client get a new one: never the cached,
/// older document.
#[tokio::test]
async fn fresh_clients_share_one_encoding_per_version_and_never_get_an_older_one() {
    let server = Server::start(&[]).await;
    let url = server.ws_url("cached");
    let encoded = || async {
        let (_, body) = http_get(&server.http_url("/api/status")).await;
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        status["full_states_encoded"].as_u64().unwrap()
    };
    let a = YClient::connect(&url).await;
    let sent = a.append_sent("t", "one");
    assert!(a.wait_for(WAIT, |s| s.echoed(&sent)).await.is_ok());
    let b = YClient::connect(&url).await;
    assert_eq!(b.text("t"), "one");
    let after_b = encoded().await;
    let c = YClient::connect(&url).await;
    assert_eq!(c.text("t"), "one");
    assert_eq!(
        encoded().await,
        after_b,
        "the same version was encoded again"
    );
    let sent = b.append_sent("t", " two");
    assert!(b.wait_for(WAIT, |s| s.echoed(&sent)).await.is_ok());
    let d = YClient::connect(&url).await;
    assert_eq!(
        d.text("t"),
        "one two",
        "a fresh client got the document before the edit"
    );
    assert_eq!(encoded().await, after_b + 1);
}

#[tokio::test]
async fn late_joiner_gets_the_full_state() {
    let server = Server::start(&[]).await;
    let a = YClient::connect(&server.ws_url("late")).await;
    for i in 0..50 {
        a.append("t", &format!("{i},"));
    }
    a.set("m", "k", "v");
    let expected: String = (0..50).map(|i| format!("{i},")).collect();
    // Once a second client sees it all, the server has it all.
    let b = YClient::connect(&server.ws_url("late")).await;
    b.wait_text("t", &expected).await;
    drop(a);
    let c = YClient::connect(&server.ws_url("late")).await;
    assert_eq!(
        c.text("t"),
        expected,
        "the first Step2 must carry the whole document"
    );
    assert_eq!(c.map_get("m", "k").as_deref(), Some("v"));
}

#[tokio::test]
async fn awareness_is_relayed_and_removed_when_its_connection_closes() {
    let server = Server::start(&[]).await;
    let a = YClient::connect(&server.ws_url("aw")).await;
    let b = YClient::connect(&server.ws_url("aw")).await;
    a.set_presence(r##"{"user":{"name":"ann","color":"#f00"}}"##);
    b.wait(|s| s.presence_of(a.client_id()).is_some()).await;
    a.close();
    b.wait(|s| s.presence_of(a.client_id()).is_none()).await;
    // and a newcomer does not see a ghost
    let c = YClient::connect(&server.ws_url("aw")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.presence_of(a.client_id()), None);
}

#[tokio::test]
async fn rooms_are_isolated_and_names_may_contain_slashes() {
    let server = Server::start(&[]).await;
    let a = YClient::connect(&server.ws_url("team/notes")).await;
    let b = YClient::connect(&server.ws_url("team/notes/archive")).await;
    a.append("t", "notes");
    b.append("t", "archive");
    // Each write has reached the server once a fresh client of its room sees it.
    let a2 = YClient::connect(&server.ws_url("team/notes")).await;
    a2.wait_text("t", "notes").await;
    let b2 = YClient::connect(&server.ws_url("team/notes/archive")).await;
    b2.wait_text("t", "archive").await;
    assert_eq!(a.text("t"), "notes");
    assert_eq!(b.text("t"), "archive");
}

#[tokio::test]
async fn bad_document_names_are_refused_before_the_upgrade() {
    let server = Server::start(&[]).await;
    let long = "x".repeat(513);
    for (path, why) in [
        (format!("/ws/{long}"), "513 bytes"),
        ("/ws/a%0Ab".to_string(), "control"),
    ] {
        let r = tokio_tungstenite::connect_async(format!("ws://{}{}", server.addr, path)).await;
        match r {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 400, "{path}");
                let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
                assert!(body.contains(why), "{body}");
            }
            other => panic!("{path}: expected HTTP 400, got {other:?}"),
        }
    }
    assert!(
        tokio_tungstenite::connect_async(server.ws_url(&"x".repeat(512)))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn oversized_message_closes_only_that_connection_with_1009() {
    let server = Server::start(&["--max-message-size", "4096"]).await;
    let bystander = YClient::connect(&server.ws_url("big")).await;
    let offender = YClient::connect(&server.ws_url("big")).await;
    offender.append("t", &"x".repeat(10_000));
    let (code, reason) = offender.wait_closed().await;
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains("4096"), "{reason}");
    // The room is fine: the bystander and a newcomer still converge, without the refused edit.
    bystander.append("t", "small");
    let c = YClient::connect(&server.ws_url("big")).await;
    c.wait_text("t", "small").await;
    assert!(bystander.closed().is_none());
    assert!(server.logged(&["WARN", "1009"]));
}

#[tokio::test]
async fn malformed_frames_close_only_the_offender_with_a_clear_code() {
    let server = Server::start(&[]).await;
    let bystander = YClient::connect(&server.ws_url("bad")).await;
    bystander.append("t", "before ");
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (vec![0x80, 0x80], 1002),                      // varint that never ends
        (vec![0, 2, 100, 1, 2, 3], 1002),              // length longer than the frame
        (vec![0, 9, 0], 1002),                         // unknown sync subtype
        (vec![0, 2, 4, 0xff, 0xff, 0xff, 0xff], 1007), // undecodable update
        (vec![1, 6, 1, 5, 1, 2, b'{', b'x'], 1007),    // awareness state that is not JSON
        (vec![], 1002),                                // empty frame
    ];
    for (frame, code) in cases {
        let c = YClient::connect(&server.ws_url("bad")).await;
        c.send(frame.clone());
        let (got, reason) = c.wait_closed().await;
        assert_eq!(got, code, "frame {frame:?}: {reason}");
        assert!(!reason.is_empty());
    }
    let t = YClient::connect(&server.ws_url("bad")).await;
    t.send_message(Message::Text("hello".into()));
    assert_eq!(t.wait_closed().await.0, 1003);

    bystander.append("t", "after");
    let c = YClient::connect(&server.ws_url("bad")).await;
    c.wait_text("t", "before after").await;
    assert!(bystander.closed().is_none());
    assert!(server.logged(&["WARN", "malformed frame", "doc=bad", "peer="]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_dropped_without_stalling_its_room() {
    let server = Server::start(&["--send-queue", "64"]).await;
    let slow = YClient::connect(&server.ws_url("slow")).await;
    let writer = YClient::connect(&server.ws_url("slow")).await;
    let reader = YClient::connect(&server.ws_url("slow")).await;
    slow.set_paused(true);
    // 400 updates of 32 KiB: ~13 MB, far more than the kernel buffers plus 64 queued messages
    // between the server and `slow`. The others keep reading and must see every update promptly.
    let chunk = "y".repeat(32 * 1024);
    for round in 1..=40 {
        for _ in 0..10 {
            writer.append("t", &chunk);
        }
        let expected = round * 10 * chunk.len();
        let r = reader
            .wait_for(Duration::from_secs(10), |s| {
                s.text_len("t") as usize == expected
            })
            .await;
        assert!(
            r.is_ok(),
            "the room stalled behind a slow client at round {round}"
        );
    }
    assert!(server.logged(&["too slow", "doc=slow"]));
    // The server lets go of the dropped client at once, although it still reads nothing (its
    // socket buffers are full): it does not wait for TCP to give up on it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http_get(&server.http_url("/api/status")).await;
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if status["connections"] == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow client's connection is still held: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    slow.set_paused(false);
    // Its close frame could not get through its full buffers: the socket was dropped (1006), or
    // the frame made it (1013). Either way the client reconnects and resyncs.
    let (code, _) = slow.wait_closed().await;
    assert!(
        code == 1013 || code == 1006,
        "slow client closed with {code}"
    );
    assert!(reader.closed().is_none() && writer.closed().is_none());
}

#[tokio::test]
async fn quiet_connections_get_keepalives_and_dead_ones_are_closed() {
    let server = Server::start(&["--ping-interval", "1s"]).await;
    let quiet = YClient::connect(&server.ws_url("quiet")).await;
    // Half an interval without data brings an empty awareness update `[1,1,0]`.
    quiet
        .wait(|s| s.frames.iter().any(|f| f == &[1, 1, 0]))
        .await;

    // A client that stops reading never answers pings: after two intervals it is closed.
    let dead = YClient::connect(&server.ws_url("quiet")).await;
    dead.set_paused(true);
    let ok = tokio::time::timeout(Duration::from_secs(15), async {
        while !server.logged(&["closing dead connection"]) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "dead connection was not closed");
    dead.set_paused(false);
    dead.wait_closed().await;
    assert!(
        quiet.closed().is_none(),
        "a live quiet connection must stay open"
    );
}

#[tokio::test]
async fn idle_documents_are_evicted_after_the_grace_period() {
    let server = Server::start(&["--evict-after", "300ms"]).await;
    let clients = futures_util::future::join_all(
        (0..5).map(|i| YClient::connect_owned(server.ws_url(&format!("evict-{i}")))),
    )
    .await;
    let status = || async {
        let (_, body) = http_get(&server.http_url("/api/status")).await;
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    };
    assert_eq!(status().await["documents"], 5);
    drop(clients);
    let mut docs = serde_json::Value::Null;
    for _ in 0..50 {
        docs = status().await["documents"].clone();
        if docs == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(docs, 0, "idle documents stayed in memory");
}

/// Clients that come and go on one document while it is evicted and reloaded between them: a
/// join that lands on a room being evicted is handed to the fresh room, and the connection talks
/// to that one, so every visit works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_racing_an_eviction_reach_the_new_room() {
    const VISITS: usize = 100;
    /// Every this many visits, a worker waits for its room's eviction before the next visit.
    const EVICT_EVERY: usize = 10;
    // Debug logging: rooms log their eviction, which this test must see happen.
    let server =
        Arc::new(Server::start_logging("concord_server=debug", &["--evict-after", "1ms"]).await);
    // One document per worker, visited one client at a time: between two visits the room goes
    // idle and is evicted right around when the next join arrives.
    let visits = (0..4).map(|worker| {
        let server = server.clone();
        tokio::spawn(async move {
            let doc = format!("churn/{worker}");
            let url = server.ws_url(&doc);
            let evicted_line = format!("doc={doc}");
            let evictions = || server.logged_count(&["evicted idle document", &evicted_line]);
            for i in 0..VISITS {
                let c = YClient::connect(&url).await;
                let mark = format!("<{worker}.{i}>");
                c.append("t", &mark);
                // The echo (an update frame holding the mark) proves the room this connection
                // talks to is alive and stored it.
                let echoed = c
                    .wait_for(Duration::from_secs(10), |s| {
                        s.closed.is_some()
                            || s.frames.iter().any(|f| {
                                f.starts_with(&[0, 2])
                                    && f.windows(mark.len()).any(|w| w == mark.as_bytes())
                            })
                    })
                    .await;
                assert!(
                    echoed.is_ok() && c.closed().is_none(),
                    "visit {worker}.{i} failed: closed with {:?}",
                    c.closed()
                );
                // Now and then the next visit waits until the room this one used is gone, so
                // the evictions the other visits race with do happen (a server that never
                // evicts fails here rather than passing without any race).
                if i % EVICT_EVERY == EVICT_EVERY - 1 {
                    let before = evictions();
                    drop(c);
                    let r = server
                        .wait_logged(
                            &["evicted idle document", &evicted_line],
                            before + 1,
                            Duration::from_secs(10),
                        )
                        .await;
                    assert!(r.is_ok(), "{doc} was not evicted after visit {i}");
                }
            }
            evictions()
        })
    });
    for (worker, v) in futures_util::future::join_all(visits)
        .await
        .into_iter()
        .enumerate()
    {
        let evictions = v.unwrap();
        assert!(
            evictions >= VISITS / EVICT_EVERY,
            "churn/{worker} was evicted {evictions} times in {VISITS} visits"
        );
    }
    for worker in 0..4 {
        let (_, text) =
            http_get(&server.http_url(&format!("/api/docs/churn/{worker}/text/t"))).await;
        let text = String::from_utf8(text).unwrap();
        for i in 0..VISITS {
            assert!(
                text.contains(&format!("<{worker}.{i}>")),
                "lost <{worker}.{i}>"
            );
        }
    }
}

#[tokio::test]
async fn sigterm_closes_connections_with_1001_and_exits_zero() {
    let mut server = Server::start(&[]).await;
    let a = YClient::connect(&server.ws_url("bye")).await;
    let b = YClient::connect(&server.ws_url("bye/2")).await;
    let status = server.sigterm().await;
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(a.wait_closed().await.0, 1001);
    assert_eq!(b.wait_closed().await.0, 1001);
}

#[tokio::test]
async fn healthz_and_demo_page_are_served() {
    let server = Server::start(&[]).await;
    let (status, body) = http_get(&server.http_url("/healthz")).await;
    assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));
    let (status, body) = http_get(&server.http_url("/")).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("<html"));
}

#[tokio::test]
async fn the_server_says_where_its_demo_is_and_serves_it_there() {
    let server = Server::start(&[]).await;
    let url = format!("http://{}/", server.addr);
    server
        .wait_logged(&[&format!("web demo: {url}")], 1, Duration::from_secs(10))
        .await
        .expect("no `web demo: URL` line at start");
    let (status, page) = http_get(&url).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("app.js"));
}
