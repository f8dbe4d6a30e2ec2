//! Connection limits, through real sockets against the real binary: over `--max-connections` an
//! upgrade gets 503 and over `--max-connections-per-ip` it gets 429, both before the upgrade,
//! while the connections already open keep syncing; a place freed by a closed connection is
//! given to the next one.
//!
//! Per-address tests dial from distinct loopback addresses (127.0.0.2, 127.0.0.3: Linux routes
//! all of 127/8 to `lo`) by binding the client socket before connecting.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use concord_crdt::encode;
use concord_crdt::yrs::StateVector;
use concord_tests::{Server, WAIT, YClient};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error, Message};

type Ws = WebSocketStream<TcpStream>;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Opens a WebSocket to `doc` from the local address `src`; `Err((status, body))` when the
/// server answers the upgrade request with an HTTP error.
async fn upgrade_from(src: IpAddr, server: &Server, doc: &str) -> Result<Ws, (u16, String)> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(src, 0)).unwrap();
    let tcp = socket.connect(server.addr).await.expect("TCP connect");
    match tokio_tungstenite::client_async(server.ws_url(doc), tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(Error::Http(resp)) => {
            let body = String::from_utf8_lossy(&resp.body().clone().unwrap_or_default()).into();
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("upgrade from {src}: {e}"),
    }
}

/// Retries the upgrade until it is admitted (a place is freed once the server has seen the
/// previous connection end); every refusal on the way must be `status`.
async fn admitted_eventually(src: IpAddr, server: &Server, doc: &str, status: u16) -> Ws {
    let deadline = Instant::now() + WAIT;
    loop {
        match upgrade_from(src, server, doc).await {
            Ok(ws) => return ws,
            Err((s, body)) => {
                assert_eq!(s, status, "unexpected refusal: {body}");
                assert!(Instant::now() < deadline, "still refused after {WAIT:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Reads frames until one starts with `prefix` (answering nothing).
async fn frame_starting(ws: &mut Ws, prefix: &[u8]) -> Vec<u8> {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) if b.starts_with(prefix) => return b.to_vec(),
                Some(Ok(_)) => {}
                other => panic!("socket ended waiting for {prefix:?}: {other:?}"),
            }
        }
    })
    .await
    .expect("frame not received in time")
}

/// Completes the sync handshake as a client: sends Step1, waits for the server's Step2.
async fn sync(ws: &mut Ws) {
    ws.send(Message::Binary(
        encode::sync_step1(&StateVector::default()).into(),
    ))
    .await
    .unwrap();
    frame_starting(ws, &[0, 1]).await;
}

#[tokio::test]
async fn over_max_connections_upgrades_get_503_and_open_ones_keep_working() {
    let server = Server::start(&["--max-connections", "3"]).await;
    let local = ip("127.0.0.1");
    let a = YClient::connect(&server.ws_url("full")).await;
    let b = YClient::connect(&server.ws_url("full")).await;
    let c = YClient::connect(&server.ws_url("full")).await;

    // The limit is the server's, whatever the document; refused before any socket is opened.
    for doc in ["full", "another"] {
        let (status, body) = upgrade_from(local, &server, doc)
            .await
            .expect_err("a fourth connection must be refused");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("connection limit (3)"), "{body}");
    }
    // A flood of refusals is logged at warn at most once per second, with a count.
    let flood_start = Instant::now();
    for _ in 0..30 {
        assert_eq!(
            upgrade_from(local, &server, "full").await.err().unwrap().0,
            503
        );
    }
    let needles = ["WARN", "connections refused before the upgrade"];
    server.wait_logged(&needles, 1, WAIT).await.unwrap();
    let warnings = server.logged_count(&needles);
    let allowed = flood_start.elapsed().as_secs() as usize + 2;
    assert!(
        warnings <= allowed,
        "{warnings} warnings for 32 refusals; at most one per second expected"
    );

    // The open connections are untouched: they still relay edits to each other.
    a.append("t", "a");
    b.append("t", "b");
    for cl in [&a, &b, &c] {
        cl.wait(|s| s.text_len("t") == 2).await;
        assert_eq!(cl.closed(), None);
    }

    // Once one closes, its place goes to the next client, which syncs and receives edits.
    c.close();
    c.wait_closed().await;
    drop(c);
    let mut d = admitted_eventually(local, &server, "full", 503).await;
    sync(&mut d).await;
    let edit = a.append_sent("t", "!");
    let update = frame_starting(&mut d, &[0, 2]).await;
    assert_eq!(update, edit, "the new client receives the others' edits");
    // And the server is full again.
    assert_eq!(
        upgrade_from(local, &server, "full").await.err().unwrap().0,
        503
    );
}

#[tokio::test]
async fn max_connections_per_ip_counts_each_address_apart() {
    let server = Server::start(&["--max-connections-per-ip", "2"]).await;
    let (x, y) = (ip("127.0.0.2"), ip("127.0.0.3"));
    let mut open = Vec::new();
    for src in [x, y] {
        for _ in 0..2 {
            let mut ws = upgrade_from(src, &server, "per-ip").await.unwrap();
            sync(&mut ws).await;
            open.push(ws);
        }
        let (status, body) = upgrade_from(src, &server, "per-ip")
            .await
            .expect_err("a third connection from one address must be refused");
        assert_eq!(status, 429, "{body}");
        assert!(body.contains("from this address (limit 2)"), "{body}");
    }
    // Another address is still welcome, and the open connections keep relaying.
    let a = YClient::connect(&server.ws_url("per-ip")).await;
    let edit = a.append_sent("t", "hello");
    for ws in &mut open {
        assert_eq!(frame_starting(ws, &[0, 2]).await, edit);
    }

    // A connection that closes frees its address's place.
    let mut first = open.remove(0);
    first.close(None).await.unwrap();
    while first.next().await.is_some() {}
    let mut again = admitted_eventually(x, &server, "per-ip", 429).await;
    sync(&mut again).await;
    assert_eq!(
        upgrade_from(x, &server, "per-ip").await.err().unwrap().0,
        429
    );
}
