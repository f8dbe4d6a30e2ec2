//! An operator's view of a node, against the real binary: `/healthz` and `/readyz` as a load
//! balancer calls them (open with auth on; ready while a peer is down; 503 with the reason while
//! the store cannot write, ready again once space is freed), and `concord status` as a script
//! runs it (its table, and its exit status: 0 all linked, 1 a peer down, 2 unreadable).
//!
//! Readiness during shutdown is not observable from outside: at SIGTERM the node closes its
//! listener and its idle keep-alive connections at once, so a probe gets a refused connection
//! (which load balancers count as down). The 503 `shutting down` answer is unit-tested on
//! `concord_server::health::readiness`.

use std::process::Output;
use std::time::Duration;

use concord_tests::cluster::{Cluster, mesh, peer_entry};
use concord_tests::{Server, YClient, concord_bin, http_get, mint};

const SECRET: &str = "opsview-auth-secret";
const WAIT: Duration = Duration::from_secs(30);

async fn get_text(url: &str) -> (u16, String) {
    let (status, body) = http_get(url).await;
    (status, String::from_utf8(body).unwrap())
}

/// Polls `url` until it answers `status`; returns the body. Panics after [`WAIT`].
async fn wait_answer(url: &str, status: u16) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (got, body) = get_text(url).await;
        if got == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} still answers {got} {body:?}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `concord status ARGS` with `envs`, bounded in time.
async fn status_cmd(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(concord_bin());
    cmd.arg("status")
        .args(args)
        .env_remove("CONCORD_TOKEN")
        .envs(envs.iter().copied())
        .kill_on_drop(true);
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("concord status did not finish")
        .expect("running concord status")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The table row of the peer in `region` (rows start with the region).
fn row<'a>(text: &'a str, region: &str) -> &'a str {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(region))
        .unwrap_or_else(|| panic!("no row for {region} in:\n{text}"))
}

fn base(server: &Server) -> String {
    format!("http://{}", server.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_node_is_live_and_ready_without_a_token() {
    let server = Server::start(&["--auth-secret", SECRET]).await;
    let url = |path: &str| format!("http://{}{path}", server.addr);
    assert_eq!(get_text(&url("/healthz")).await, (200, "ok".into()));
    assert_eq!(get_text(&url("/readyz")).await, (200, "ready".into()));
    // The same node keeps its data to itself: the probes are open, status is not.
    assert_eq!(get_text(&url("/api/status")).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_peer_is_down_stays_ready() {
    let mut c = Cluster::start(2, &mesh(2), Duration::ZERO, &[]).await;
    c.wait_linked(&mesh(2)).await;
    let readyz = format!("http://{}/readyz", c.nodes[0].addr);
    assert_eq!(get_text(&readyz).await, (200, "ready".into()));
    c.nodes[1].kill9().await;
    c.wait_status(0, WAIT, "the link to node-1 down", |s| {
        peer_entry(s, 1).is_some_and(|p| p["connected"] == false)
    })
    .await;
    // A region serves its users alone: its peer being gone is no reason to take it out.
    assert_eq!(get_text(&readyz).await, (200, "ready".into()));
    // ...and it still takes writes.
    let client = YClient::connect(&c.nodes[0].ws_url("alone")).await;
    let watcher = YClient::connect(&c.nodes[0].ws_url("alone")).await;
    client.append("t", "still writing");
    watcher.wait_text("t", "still writing").await;
    assert_eq!(get_text(&readyz).await, (200, "ready".into()));
}

/// Fills the store up to `--max-db-size`: `/readyz` turns 503 and says so. The database holds a
/// ballast table the test put there before starting the node; dropping it (what an operator
/// freeing space does) makes the node ready again without any client writing, and writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_store_is_full_and_ready_once_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("concord.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE ballast (b BLOB); INSERT INTO ballast VALUES (zeroblob(200000));",
        )
        .unwrap();
    }
    let server = Server::start_in(dir.path(), &["--max-db-size", "450000"]).await;
    let readyz = format!("http://{}/readyz", server.addr);
    assert_eq!(get_text(&readyz).await, (200, "ready".into()));

    // One 8 KB update at a time, each committed (the watcher sees it) before the next, until
    // one fails: the room closes its connections with 1011.
    let writer = YClient::connect(&server.ws_url("full")).await;
    let watcher = YClient::connect(&server.ws_url("full")).await;
    let chunk = "z".repeat(8 * 1024);
    let mut written = 0;
    loop {
        assert!(written < 100, "the store never filled up");
        writer.append("t", &chunk);
        let expected = (written + 1) * chunk.len();
        watcher
            .wait(|s| s.closed.is_some() || s.text("t").len() >= expected)
            .await;
        if watcher.closed().is_some() {
            break;
        }
        written += 1;
    }
    assert_eq!(watcher.closed().unwrap().0, 1011);
    assert!(written > 0, "not even one update fit");
    let reason = wait_answer(&readyz, 503).await;
    assert!(
        reason.starts_with("not ready: database at --max-db-size ("),
        "{reason:?}"
    );
    assert!(!reason.contains('\n'), "one line: {reason:?}");
    // Still not ready across the next write probes (the writer probes once a second): the
    // probe does not mistake a full store for a writable one.
    let until = tokio::time::Instant::now() + Duration::from_millis(2500);
    while tokio::time::Instant::now() < until {
        assert_eq!(get_text(&readyz).await.0, 503, "ready while still full");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        get_text(&format!("http://{}/healthz", server.addr)).await,
        (200, "ok".into()),
        "full is not dead"
    );
    // What the alert reads: the store cannot write, whatever the write errors' rate.
    let metrics = format!("http://{}/metrics", server.addr);
    let writable = |text: &str| {
        text.lines()
            .any(|l| l.starts_with("concord_store_writable{") && l.ends_with(" 1"))
    };
    assert!(
        !writable(&get_text(&metrics).await.1),
        "concord_store_writable is 0 while full"
    );

    // Free space behind the node's back: its write probe finds it.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute_batch("DROP TABLE ballast").unwrap();
    drop(conn);
    assert_eq!(wait_answer(&readyz, 200).await, "ready");
    assert!(server.logged(&["store writable again"]));
    assert!(
        writable(&get_text(&metrics).await.1),
        "concord_store_writable is 1 again"
    );
    let again = YClient::connect(&server.ws_url("full")).await;
    let reader = YClient::connect(&server.ws_url("full")).await;
    again.append("t", "after");
    reader.wait(|s| s.text("t").ends_with("after")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_every_peer_and_exits_1_when_one_is_down() {
    let mut c = Cluster::start(3, &mesh(3), Duration::ZERO, &[]).await;
    c.wait_linked(&mesh(3)).await;
    // Each end dials the other: until node 0's own dials have reached their nodes (the first
    // tries may fail before the proxies are aimed), a dialed URL not yet reached is a row of
    // its own, down. All linked means every row up.
    c.wait_status(0, WAIT, "every peer row linked", |s| {
        let peers = s["peers"].as_array().unwrap();
        peers.len() == 2 && peers.iter().all(|p| p["connected"] == true)
    })
    .await;
    let url = base(&c.nodes[0]);

    let out = status_cmd(&[&url], &[]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(
        text.starts_with(&format!("node     node-0 (region r0) at {url}\n")),
        "{text}"
    );
    assert!(text.contains("peers    2 of 2 linked"), "{text}");
    for (region, node) in [("r1", "node-1"), ("r2", "node-2")] {
        let cells: Vec<&str> = row(&text, region).split_whitespace().collect();
        assert_eq!(&cells[..3], [region, node, "up"], "{text}");
    }

    c.nodes[2].kill9().await;
    c.wait_status(0, WAIT, "the link to node-2 down", |s| {
        peer_entry(s, 2).is_some_and(|p| p["connected"] == false)
    })
    .await;
    let out = status_cmd(&[&url], &[]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(text.contains("peers    1 of 2 linked"), "{text}");
    let down = row(&text, "r2");
    let cells: Vec<&str> = down.split_whitespace().collect();
    assert_eq!(&cells[..4], ["r2", "node-2", "down", "-"], "{text}");
    // When it was last heard from, and why it is not now (once the redial has failed).
    assert!(down.contains(" ago "), "{down}");
    let up = row(&text, "r1");
    assert_eq!(up.split_whitespace().nth(2), Some("up"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_needs_an_admin_token_when_auth_is_on() {
    let server = Server::start(&["--auth-secret", SECRET]).await;
    let url = base(&server);

    let out = status_cmd(&[&url], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("answered 401: a token with admin is needed"),
        "{}",
        stderr(&out)
    );

    // A valid token without admin: refused, and the token is not printed.
    let reader = mint(SECRET, &[("*", "read")], false, Duration::from_secs(600));
    let out = status_cmd(&[&url, "--token", &reader], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    let said = stderr(&out);
    assert!(
        said.contains("answered 403: a token with admin is needed"),
        "{said}"
    );
    assert!(said.contains("the token given was refused"), "{said}");
    assert!(!said.contains(&reader) && !stdout(&out).contains(&reader));

    let admin = mint(SECRET, &[], true, Duration::from_secs(600));
    let out = status_cmd(&[&url, "--token", &admin], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("peers    none"), "{}", stdout(&out));
    let out = status_cmd(&[&url], &[("CONCORD_TOKEN", &admin)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stdout(&out).contains(&admin) && !stderr(&out).contains(&admin));
    // From a file, out of `ps`: the admin token works, and an empty file is refused (exit 2).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{admin}\n")).unwrap();
    let out = status_cmd(&[&url, "--token-file", file.to_str().unwrap()], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    std::fs::write(&file, "").unwrap();
    let out = status_cmd(&[&url, "--token-file", file.to_str().unwrap()], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stderr(&out).contains("--token-file"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_an_unreachable_node_exits_2() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = status_cmd(&[&url, "--timeout", "3s"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot reach"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_prints_a_snapshot_each_second_until_interrupted() {
    use tokio::io::AsyncReadExt;
    let server = Server::start(&[]).await;
    let mut child = tokio::process::Command::new(concord_bin())
        .args(["status", "--watch", &base(&server)])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut pipe = child.stdout.take().unwrap();
    let mut seen = String::new();
    let started = tokio::time::Instant::now();
    while seen.matches("peers    none").count() < 3 {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, pipe.read(&mut buf))
            .await
            .expect("no snapshot")
            .unwrap();
        assert!(n > 0, "watch ended by itself: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "three snapshots should take two seconds: {:?}",
        started.elapsed()
    );
    // Not a terminal: no escape codes, snapshots separated by a blank line.
    assert!(!seen.contains('\u{1b}'), "{seen:?}");
    assert_eq!(seen.matches("\n\nnode     ").count(), 2, "{seen}");
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGINT) };
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "no peers: all linked");
}
