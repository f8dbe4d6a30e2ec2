//! `--max-live-docs`, through real sockets against the real binary: at the limit, a client
//! opening a document that is not live gets 503 before the upgrade, while the live documents are
//! joined and read as before, and HTTP reads (which start no room) are answered from the store; once rooms are evicted, new
//! documents open again. Updates replicated from a peer are never refused: they open their
//! document over the limit rather than be lost.

use std::time::{Duration, Instant};

use concord_tests::cluster::{Cluster, mesh};
use concord_tests::{Server, WAIT, YClient, http_get, upgrade_status};

const REFUSED: &str = "too many live documents on this node (limit 2)";

/// The node's live documents, as `/api/status` reports them.
async fn documents(server: &Server) -> u64 {
    let (status, body) = http_get(&server.http_url("/api/status")).await;
    assert_eq!(status, 200);
    serde_json::from_slice::<serde_json::Value>(&body).unwrap()["documents"]
        .as_u64()
        .unwrap()
}

/// Waits until `/api/status` reports `n` live documents.
async fn wait_documents(server: &Server, n: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let live = documents(server).await;
        if live == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{live} live documents, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The status and body of `GET path`.
async fn get(server: &Server, path: &str) -> (u16, String) {
    let (status, body) = http_get(&server.http_url(path)).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn at_max_live_docs_new_documents_get_503_and_live_ones_keep_working() {
    let server = Server::start(&["--max-live-docs", "2", "--evict-after", "300ms"]).await;
    let a = YClient::connect(&server.ws_url("live/one")).await;
    let b = YClient::connect(&server.ws_url("live/two")).await;
    a.append("t", "one");
    b.append("t", "two");
    assert_eq!(documents(&server).await, 2);

    // A third document is refused before the upgrade, with the reason. A read of it starts no
    // room, so it is answered (404: never written). Repeated refusals are logged at warn (at
    // most once a second).
    for _ in 0..3 {
        let (status, body) = upgrade_status(&server.ws_url("live/three"), None).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains(REFUSED), "{body}");
        let (status, body) = get(&server, "/api/docs/live/three/update").await;
        assert_eq!(status, 404, "{body}");
    }
    let needles = ["WARN", "new documents refused at the live document limit"];
    server.wait_logged(&needles, 1, WAIT).await.unwrap();
    assert_eq!(documents(&server).await, 2, "a refusal opens nothing");

    // The live documents are untouched: a new client joins one and syncs with its member, and
    // reads of them are served.
    let c = YClient::connect(&server.ws_url("live/one")).await;
    c.wait_text("t", "one").await;
    c.append("t", "!");
    a.wait_text("t", "one!").await;
    let (status, body) = get(&server, "/api/docs/live/two/text/t").await;
    assert_eq!((status, body.as_str()), (200, "two"));

    // Once the open documents' clients leave and their rooms are evicted, new documents open.
    for cl in [&a, &b, &c] {
        cl.close();
        cl.wait_closed().await;
    }
    drop((a, b, c));
    wait_documents(&server, 0).await;
    // The count in /api/status drops as a room leaves the map; its place is freed when its task
    // has ended, a moment later: retry while refused.
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = upgrade_status(&server.ws_url("live/three"), None).await;
        if status == 101 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "still refused after eviction");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A stored document that is not live is read from the store again, and the new document
    // is joined and written.
    let (status, body) = get(&server, "/api/docs/live/one/text/t").await;
    assert_eq!((status, body.as_str()), (200, "one!"));
    let d = YClient::connect(&server.ws_url("live/three")).await;
    d.append("t", "three");
    d.wait(|s| s.frames.iter().any(|f| f.starts_with(&[0, 2])))
        .await;
}

/// A peer's update for a document this node does not have live is taken even at the limit: the
/// document opens over it, the update is applied, and clients can still join that document.
#[tokio::test]
async fn replicated_updates_open_documents_over_the_limit() {
    let c = Cluster::start(2, &mesh(2), Duration::ZERO, &["--max-live-docs", "1"]).await;
    c.wait_linked(&mesh(2)).await;
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    // Node 1 is at its limit.
    let _held = YClient::connect(&n1.ws_url("held")).await;
    let (status, body) = upgrade_status(&n1.ws_url("other"), None).await;
    assert_eq!(status, 503, "{body}");

    // A client of node 0 writes a document node 1 does not have live.
    let writer = YClient::connect(&n0.ws_url("replicated")).await;
    writer.append("t", "from r0");
    wait_documents(n1, 2).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = get(n1, "/api/docs/replicated/text/t").await;
        assert_eq!(status, 200, "{body}");
        if body == "from r0" {
            break;
        }
        assert!(Instant::now() < deadline, "node 1 has {body:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // It is live there now, so a client of node 1 joins it, over the limit or not...
    let reader = YClient::connect(&n1.ws_url("replicated")).await;
    reader.wait_text("t", "from r0").await;
    // ...while documents that are not live are still refused.
    let (status, body) = upgrade_status(&n1.ws_url("other"), None).await;
    assert_eq!(status, 503, "{body}");
}
