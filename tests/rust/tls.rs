//! TLS for clients and between regions, through real sockets and the real binary: clients over
//! `wss://` (and what they refuse), certificate rotation on SIGHUP, a cluster whose peer links
//! are `https://` through the delay proxies, peers refused for a wrong CA or for being plain
//! under `--peer-tls-required`, and sockets that never finish their handshake (slowloris).
//! Certificates are made in each test ([`concord_tests::tls`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use concord_tests::cluster::{Cluster, SECRET, mesh};
use concord_tests::tls::{
    TestCa, client_config, client_config_for, https_get, served_certificate, tls_connect,
    wss_connect,
};
use concord_tests::{Server, YClient, concord_bin, http_get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A CA and a server certificate it signed, as files in a temporary directory.
struct Files {
    dir: tempfile::TempDir,
    ca: TestCa,
    ca_file: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn files(ca_name: &str) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(ca_name);
    let ca_file = ca.write(dir.path(), "ca");
    let (cert, key) = ca.issue().write(dir.path(), "server");
    Files {
        dir,
        ca,
        ca_file,
        cert,
        key,
    }
}

impl Files {
    fn serve_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "--tls-cert",
            self.cert.to_str().unwrap(),
            "--tls-key",
            self.key.to_str().unwrap(),
        ];
        args.extend(extra);
        args
    }
}

async fn status_tls(server: &Server, tls: &TestCa) -> serde_json::Value {
    let (code, body) = https_get(&server.https_url("/api/status"), client_config(&[tls])).await;
    assert_eq!(code, 200);
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_syncs_over_wss_and_refuses_a_server_it_cannot_verify() {
    let f = files("concord test CA");
    let server = Server::start(&f.serve_args(&[])).await;
    let trusts = client_config(&[&f.ca]);

    let a = YClient::connect_tls(&server.wss_url("tls/doc"), trusts.clone()).await;
    a.append("t", "over wss");
    let b = YClient::connect_tls(&server.wss_url("tls/doc"), trusts.clone()).await;
    b.wait_text("t", "over wss").await;
    // HTTPS serves the rest, and the node tells peers to reach it over https.
    let status = status_tls(&server, &f.ca).await;
    let url = status["url"].as_str().unwrap();
    assert!(url.starts_with("https://"), "public URL {url}");

    // The same client without that CA refuses the server.
    let stranger = TestCa::new("some other CA");
    let refused = wss_connect(&server.wss_url("tls/doc"), client_config(&[&stranger])).await;
    let Err(err) = refused else {
        panic!("a client must refuse a certificate it cannot verify");
    };
    assert!(err.contains("UnknownIssuer"), "{err}");
    // And a plain client gets nothing out of the TLS port.
    assert!(
        tokio_tungstenite::connect_async(server.ws_url("tls/doc"))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_new_certificate_to_new_connections_and_keeps_open_ones() {
    let f = files("first CA");
    let server = Server::start(&f.serve_args(&[])).await;
    let port = server.addr.port();
    let a = YClient::connect_tls(&server.wss_url("tls/rotate"), client_config(&[&f.ca])).await;
    a.append("t", "before ");

    // Rotate to a certificate from another CA (new key, new serial), then SIGHUP.
    let next_ca = TestCa::new("second CA");
    let next = next_ca.issue();
    next.write(f.dir.path(), "server");
    unsafe { libc::kill(server.pid(), libc::SIGHUP) };
    server
        .wait_logged(&["TLS certificate reloaded"], 1, Duration::from_secs(10))
        .await
        .expect("the server did not reload on SIGHUP");

    let served = served_certificate(port, client_config(&[&next_ca])).await;
    assert_eq!(
        served, next.der,
        "a new connection gets the new certificate"
    );
    assert!(
        tls_connect(port, client_config(&[&f.ca])).await.is_err(),
        "the old certificate is no longer served"
    );
    // The connection opened before the reload stays up and keeps working.
    let b = YClient::connect_tls(&server.wss_url("tls/rotate"), client_config(&[&next_ca])).await;
    b.wait_text("t", "before ").await;
    a.append("t", "after");
    b.wait_text("t", "before after").await;
    assert_eq!(a.closed(), None);

    // A reload that fails (a key that is not one) keeps the current certificate.
    std::fs::write(&f.key, "not a key").unwrap();
    unsafe { libc::kill(server.pid(), libc::SIGHUP) };
    server
        .wait_logged(
            &["TLS certificate reload failed"],
            1,
            Duration::from_secs(10),
        )
        .await
        .expect("a failed reload must be logged");
    let served = served_certificate(port, client_config(&[&next_ca])).await;
    assert_eq!(served, next.der);
    assert_eq!(a.closed(), None);
}

/// Three regions meshed through the delay proxies with `https://` peer URLs (and
/// `--peer-tls-required`): the links come up over TLS and an edit reaches every region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_replicate_over_tls_links_through_the_proxies() {
    let f = files("cluster CA");
    let ca_file = f.ca_file.to_str().unwrap();
    let extra = f.serve_args(&["--peer-ca", ca_file, "--peer-tls-required"]);
    let edges = mesh(3);
    let c = Cluster::start(3, &edges, Duration::from_millis(20), &extra).await;

    // Every node links to both others.
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = status_tls(&c.nodes[i], &f.ca).await;
            let peers = status["peers"].as_array().unwrap().clone();
            let linked = peers.iter().filter(|p| p["connected"] == true).count();
            if linked >= 2 {
                for p in peers.iter().filter(|p| p["direction"] == "outbound") {
                    let url = p["url"].as_str().unwrap();
                    assert!(url.starts_with("https://localhost:"), "{url}");
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} is linked to {linked} of 2 peers: {peers:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let trusts = client_config(&[&f.ca]);
    let clients = [
        YClient::connect_tls(&c.nodes[0].wss_url("tls/regions"), trusts.clone()).await,
        YClient::connect_tls(&c.nodes[1].wss_url("tls/regions"), trusts.clone()).await,
        YClient::connect_tls(&c.nodes[2].wss_url("tls/regions"), trusts.clone()).await,
    ];
    clients[0].append("t", "from r0 ");
    clients[2].append("t", "from r2");
    for (i, client) in clients.iter().enumerate() {
        client
            .wait_for(Duration::from_secs(20), |s| {
                let t = s.text("t");
                t.contains("from r0 ") && t.contains("from r2")
            })
            .await
            .unwrap_or_else(|_| {
                panic!("region {i} did not get both edits: {:?}", client.text("t"))
            });
    }
    for node in &c.nodes {
        assert!(node.logged(&["peer link up"]));
    }
}

/// A peer whose certificate comes from a CA this node does not trust is never spoken to: the
/// link never comes up, and the dialer's status and log say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_certificate_from_the_wrong_ca_is_refused() {
    let trusted = files("the CA the dialer trusts");
    let rogue = files("a CA nobody trusts");
    let acceptor =
        Server::start(&rogue.serve_args(&["--peer-secret", SECRET, "--node-id", "rogue"])).await;
    let peer_url = format!("https://localhost:{}", acceptor.addr.port());
    let dialer = Server::start(&[
        "--peers",
        &peer_url,
        "--peer-ca",
        trusted.ca_file.to_str().unwrap(),
        "--peer-secret",
        SECRET,
        "--node-id",
        "dialer",
    ])
    .await;

    dialer
        .wait_logged(
            &["cannot reach peer", "UnknownIssuer"],
            1,
            Duration::from_secs(20),
        )
        .await
        .expect("the dialer must log why it refuses the peer");
    let (_, body) = http_get(&dialer.http_url("/api/status")).await;
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let peer = &status["peers"][0];
    assert_eq!(peer["connected"], false);
    let why = peer["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("invalid peer certificate"), "{peer}");
    assert!(!dialer.logged(&["peer link up"]));
    assert!(!acceptor.logged(&["peer link up"]));
}

/// `--peer-tls-required` refuses plain peers both ways: a node told to dial a plain URL does not
/// start (and says how to fix it); a plain incoming link is answered 403 before the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_refuses_plain_peers_both_ways() {
    // Dialing: refuses to start.
    let dir = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(concord_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--peer-secret", SECRET, "--peer-tls-required"])
        .args(["--peers", "http://127.0.0.1:9"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("a node told to dial a plain peer under --peer-tls-required must not start")
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--peer-tls-required") && stderr.contains("https://"),
        "{stderr}"
    );

    // Accepting: the plain link gets 403, and the acceptor logs why and from where.
    let strict = Server::start(&[
        "--peer-secret",
        SECRET,
        "--peer-tls-required",
        "--node-id",
        "strict",
    ])
    .await;
    let plain = Server::start(&[
        "--peers",
        &format!("http://{}", strict.addr),
        "--peer-secret",
        SECRET,
        "--node-id",
        "plain",
    ])
    .await;
    strict
        .wait_logged(
            &[
                "peer link refused",
                "--peer-tls-required",
                "remote=127.0.0.1:",
            ],
            1,
            Duration::from_secs(20),
        )
        .await
        .expect("the strict node must refuse the plain link, at warn, with the remote address");
    assert!(strict.logged(&["WARN", "peer link refused"]));
    plain
        .wait_logged(&["cannot reach peer", "403"], 1, Duration::from_secs(20))
        .await
        .expect("the plain dialer must be answered 403");
    assert!(!strict.logged(&["peer link up"]));
    assert!(!plain.logged(&["peer link up"]));
}

/// Reads until the server closes the socket; how long that took from `since`. Panics if the
/// socket is still open after 10 s.
async fn closed_after(sock: &mut (impl AsyncReadExt + Unpin), since: Instant) -> Duration {
    let mut buf = [0u8; 1024];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "a stalled socket was still open after 10 s");
    since.elapsed()
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// Cut at the timeout, not at once (less a little for the clocks).
const AT_LEAST: Duration = Duration::from_millis(900);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_finish_their_request_are_cut() {
    let server = Server::start(&["--handshake-timeout", "1s"]).await;
    // A client connected before, and kept longer than the timeout, is left alone.
    let a = YClient::connect(&server.ws_url("tls/slow")).await;

    // Half a request, then nothing.
    let started = Instant::now();
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let took = closed_after(&mut half, started).await;
    assert!(took >= AT_LEAST, "cut after {took:?}, before the timeout");
    let took = closed_after(&mut silent, started).await;
    assert!(took >= AT_LEAST, "cut after {took:?}, before the timeout");

    // A whole request on a new socket is still answered, and the old client still works.
    let mut whole = TcpStream::connect(server.addr).await.unwrap();
    whole
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    whole.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(HANDSHAKE_TIMEOUT < started.elapsed());

    // On a kept-alive connection, a later request gets the same time for its headers.
    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    kept.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let took = closed_after(&mut kept, started).await;
    assert!(took >= AT_LEAST, "cut after {took:?}, before the timeout");
    assert_eq!(a.closed(), None);
    let b = YClient::connect(&server.ws_url("tls/slow")).await;
    a.append("t", "still here");
    b.wait_text("t", "still here").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sockets_that_never_finish_their_handshake_are_cut() {
    let f = files("slowloris CA");
    let server = Server::start(&f.serve_args(&["--handshake-timeout", "1s"])).await;
    let port = server.addr.port();

    // No ClientHello at all.
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let took = closed_after(&mut silent, started).await;
    assert!(took >= AT_LEAST, "cut after {took:?}, before the timeout");

    // A finished TLS handshake, then no request.
    let started = Instant::now();
    let mut idle = tls_connect(port, client_config(&[&f.ca])).await.unwrap();
    let took = closed_after(&mut idle, started).await;
    assert!(took >= AT_LEAST, "cut after {took:?}, before the timeout");

    // A client that does its part is served.
    let (code, _) = https_get(&server.https_url("/healthz"), client_config(&[&f.ca])).await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_refused_so_its_requests_cannot_escape_the_header_timeout() {
    // Served as HTTP/2, a connection would get no header timeout after its first request.
    let server = Server::start(&[]).await;
    let url = format!("http://{}/healthz", server.addr);
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let answer = h2.get(&url).send().await;
    assert!(answer.is_err(), "HTTP/2 was served: {answer:?}");
    let h1 = reqwest::Client::new().get(&url).send().await.unwrap();
    assert_eq!(h1.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_not_yet_upgraded_are_capped_and_upgraded_ones_are_not() {
    let server = Server::start(&[
        "--max-pending-connections",
        "2",
        "--handshake-timeout",
        "30s",
    ])
    .await;
    // Upgraded WebSockets give their place back: many fit under a cap of 2.
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(YClient::connect(&server.ws_url("pending/doc")).await);
    }
    // Two silent sockets take both places; a third socket is closed at once.
    let _silent: Vec<TcpStream> =
        futures_util::future::join_all((0..2).map(|_| TcpStream::connect(server.addr)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let started = Instant::now();
        let mut third = TcpStream::connect(server.addr).await.unwrap();
        third
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("the third socket was neither answered nor closed")
            .unwrap_or(0);
        if n == 0 {
            assert!(started.elapsed() < Duration::from_secs(2));
            break;
        }
        // Answered: the silent sockets were not accepted yet. Try again.
        assert!(Instant::now() < deadline, "the cap never applied");
    }
    server
        .wait_logged(&["--max-pending-connections"], 1, Duration::from_secs(10))
        .await
        .expect("the refusal was not logged");
    // The upgraded clients were never affected.
    clients[0].append("t", "still served");
    clients[5].wait_text("t", "still served").await;
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_never_kills_a_server_without_tls() {
    let server = Server::start(&[]).await;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGHUP) }, 0);
    server
        .wait_logged(&["SIGHUP: nothing to reload"], 1, Duration::from_secs(10))
        .await
        .expect("SIGHUP was not logged");
    assert_eq!(http_get(&server.http_url("/healthz")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_links_over_tls_older_than_1_3_are_refused() {
    let f = files("tls12 CA");
    let server = Server::start(&f.serve_args(&["--peer-secret", SECRET])).await;
    let tls12 = || client_config_for(&[&f.ca], &[&rustls::version::TLS12]);
    let tls13 = || client_config_for(&[&f.ca], &[&rustls::version::TLS13]);
    // A browser may use TLS 1.2 for everything else...
    assert_eq!(
        https_get(&server.https_url("/healthz"), tls12()).await.0,
        200
    );
    // ...but a peer link must be TLS 1.3, whose exporter is unique to its session.
    let url = format!("wss://localhost:{}/peer", server.addr.port());
    let Err(refused) = wss_connect(&url, tls12()).await else {
        panic!("a TLS 1.2 peer link was upgraded");
    };
    assert!(refused.contains("403"), "{refused}");
    server
        .wait_logged(
            &["WARN", "peer link refused", "TLS older than 1.3"],
            1,
            Duration::from_secs(10),
        )
        .await
        .expect("not logged");
    assert!(wss_connect(&url, tls13()).await.is_ok());
}
