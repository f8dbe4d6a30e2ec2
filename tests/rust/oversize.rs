//! A message far larger than `--max-message-size`, sent by a client that is still writing it
//! when the server refuses it: the client must see the documented close code 1009, not a reset
//! (1006 in browsers and `ws`). The server reads and discards what is still arriving, within a
//! byte and a time bound, so its close frame is read before the socket goes away; and a client
//! that never stops sending is let go once the time bound is up.

use std::time::{Duration, Instant};

use concord_server::connection::CLOSE_LINGER;
use concord_tests::Server;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The limit the server runs with: 64 KiB, so any of the messages below is far beyond it.
const LIMIT: &str = "65536";
/// Plenty for anything on loopback that should take milliseconds.
const WAIT: Duration = Duration::from_secs(30);

/// Sends one binary message of `len` bytes, then reads until the close frame; returns its code,
/// or what went wrong instead. This is how a browser or `ws` client sees it: one whose send
/// fails on a reset reports 1006 and reads nothing more, whatever the server had sent before.
async fn send_huge(server: &Server, doc: &str, len: usize) -> Result<u16, String> {
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url(doc))
        .await
        .expect("websocket connect");
    tokio::time::timeout(WAIT, ws.send(Message::Binary(vec![7u8; len].into())))
        .await
        .expect("sending did not end within the wait")
        .map_err(|e| format!("sending failed (a browser reports 1006): {e}"))?;
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return Ok(u16::from(frame.code)),
                Some(Ok(Message::Close(None))) => return Err("close without a code".into()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("read failed: {e}")),
                None => return Err("stream ended without a close frame".into()),
            }
        }
    })
    .await
    .expect("no close frame nor error within the wait")
}

#[tokio::test]
async fn a_message_megabytes_over_the_limit_is_closed_with_1009_not_reset() {
    let server = Server::start(&["--max-message-size", LIMIT]).await;
    for (i, len) in [8usize << 20, 80 << 20].into_iter().enumerate() {
        let outcome = send_huge(&server, &format!("huge-{i}"), len).await;
        assert_eq!(outcome, Ok(1009), "a message of {len} bytes");
    }
    server
        .wait_logged(&["WARN", "1009", "83886080"], 1, WAIT)
        .await
        .expect("the refusal is logged with the message's size");
}

/// The WebSocket handshake by hand, byte by byte, so no frame after it is read into a library's
/// buffer; returns the upgraded socket, on which the test writes raw frames.
async fn raw_upgrade(server: &Server, doc: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /ws/{doc} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        server.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        response.push(tcp.read_u8().await.expect("upgrade response"));
    }
    assert!(
        response.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    tcp
}

/// Minimal reader of the server's (unmasked) frames: returns the close code of the first close
/// frame, skipping the data frames before it.
async fn read_close_code(r: &mut (impl AsyncReadExt + Unpin)) -> u16 {
    loop {
        let mut head = [0u8; 2];
        r.read_exact(&mut head).await.expect("frame header");
        let len = match head[1] & 0x7f {
            126 => u64::from(r.read_u16().await.unwrap()),
            127 => r.read_u64().await.unwrap(),
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        r.read_exact(&mut payload).await.expect("frame payload");
        if head[0] & 0x0f == 0x8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

#[tokio::test]
async fn a_client_that_never_stops_sending_is_let_go_within_the_time_bound() {
    let server = Server::start(&["--max-message-size", LIMIT]).await;
    let tcp = raw_upgrade(&server, "endless").await;
    let (mut rx, mut tx) = tcp.into_split();

    // One binary frame announcing 1 TiB (masked, as a client's must be), then garbage at a pace
    // that stays far below the byte bound of the drain: only the time bound can end it.
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    tx.write_all(&header).await.unwrap();
    let writer = tokio::spawn(async move {
        let chunk = [0x5au8; 16 * 1024];
        loop {
            if tx.write_all(&chunk).await.is_err() {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });

    let code = tokio::time::timeout(WAIT, read_close_code(&mut rx))
        .await
        .expect("a close frame");
    let refused = Instant::now();
    assert_eq!(code, 1009);
    let cut = tokio::time::timeout(WAIT, writer)
        .await
        .expect("the server never stopped reading a client that never stops sending")
        .unwrap();
    let held = cut - refused;
    assert!(
        held <= CLOSE_LINGER + Duration::from_secs(2),
        "held for {held:?} after the close frame"
    );
}

/// A frame the WebSocket layer itself refuses (here an unmasked one, which RFC 6455 forbids from
/// a client) closes with 1002, the documented code for a malformed frame, and says why, rather
/// than with the 1001 "server is shutting down" a connection gets when nothing recorded a reason.
#[tokio::test]
async fn a_frame_the_websocket_layer_refuses_is_closed_with_1002() {
    let server = Server::start(&[]).await;
    let mut tcp = raw_upgrade(&server, "unmasked").await;
    // A binary frame of 3 bytes without a mask: a Step1 with an empty state vector.
    tcp.write_all(&[0x82, 0x03, 0x00, 0x00, 0x00])
        .await
        .unwrap();
    let code = tokio::time::timeout(WAIT, read_close_code(&mut tcp))
        .await
        .expect("a close frame");
    assert_eq!(code, 1002);
    server
        .wait_logged(&["WARN", "1002", "unmasked"], 1, WAIT)
        .await
        .expect("the refusal is logged with the reason");
}

/// A client that goes away without a close frame (a killed tab, a lost network) is an ordinary
/// disconnect: nothing malformed was sent, so nothing is logged as a refusal.
#[tokio::test]
async fn a_client_that_drops_its_socket_is_not_a_refusal() {
    let server = Server::start(&[]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("dropped"))
        .await
        .expect("websocket connect");
    // Wait for the server's Step1, so the connection is fully served before it drops.
    let first = tokio::time::timeout(WAIT, ws.next()).await.expect("step1");
    assert!(matches!(first, Some(Ok(Message::Binary(_)))));
    drop(ws); // TCP closed, no close frame
    // Wait until the server has let the connection go.
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = concord_tests::http_get(&server.http_url("/api/status")).await;
        assert_eq!(status, 200);
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if status["connections"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the connection was never let go");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !server.logged(&["WARN"]),
        "a plain disconnect was logged as a warning: {:#?}",
        server.log.lock().unwrap()
    );
}

/// A text frame that is not even UTF-8 is refused as invalid data (1007), not mistaken for a
/// shutdown (1001).
#[tokio::test]
async fn a_text_frame_that_is_not_utf8_is_closed_with_1007() {
    let server = Server::start(&[]).await;
    let mut tcp = raw_upgrade(&server, "not-utf8").await;
    // A masked text frame (an all-zero mask) holding the byte 0xff.
    tcp.write_all(&[0x81, 0x81, 0, 0, 0, 0, 0xff])
        .await
        .unwrap();
    let code = tokio::time::timeout(WAIT, read_close_code(&mut tcp))
        .await
        .expect("a close frame");
    assert_eq!(code, 1007);
}
