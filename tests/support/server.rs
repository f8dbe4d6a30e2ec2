//! The real `concord` binary, started as a child process on a free port with its own data dir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Path of the `concord` binary under test: `$CONCORD_BIN`, or a release build made on first use
/// (a no-op when up to date), so a bare `cargo test` never runs a stale binary.
pub fn concord_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        if let Ok(bin) = std::env::var("CONCORD_BIN") {
            return root.join(bin); // relative to the workspace root; absolute stays absolute
        }
        let status = std::process::Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "-p",
                "concord-server",
                "--bin",
                "concord",
            ])
            .current_dir(&root)
            .status()
            .expect("running cargo build for the concord binary");
        assert!(status.success(), "building the concord binary failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or(root.join("target"));
        target.join("release").join("concord")
    })
    .clone()
}

/// A running server process. Killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Keeps a temporary data dir alive as long as the server (None when the caller owns it).
    _tmp: Option<Arc<tempfile::TempDir>>,
    /// Every line the server logged, for assertions on logs.
    pub log: Arc<Mutex<Vec<String>>>,
    args: Vec<String>,
    /// The `RUST_LOG` filter it runs with (kept across restarts).
    rust_log: String,
    /// The subcommand it runs: `serve`, or `demo` (several regions in one process).
    command: &'static str,
    /// With `--auth-secret S` among its arguments: an admin token for every document, minted
    /// from S, which [`Server::http_url`] adds to every URL (status, reads).
    pub admin_token: Option<String>,
}

impl Server {
    /// Starts a server with a fresh temporary data dir.
    pub async fn start(args: &[&str]) -> Server {
        let tmp = Arc::new(tempfile::tempdir().unwrap());
        let mut s = Server::start_in(tmp.path(), args).await;
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on `data_dir` (to restart on the same data).
    pub async fn start_in(data_dir: &Path, args: &[&str]) -> Server {
        Server::spawn(
            "serve",
            data_dir,
            args.iter().map(|s| s.to_string()).collect(),
            None,
            default_log(),
        )
        .await
    }

    /// Starts `concord demo` with a fresh temporary data dir; `addr` is one of its regions (the
    /// first to log where it listens), and the log holds every region's lines.
    pub async fn start_demo(args: &[&str]) -> Server {
        let tmp = Arc::new(tempfile::tempdir().unwrap());
        let args = args.iter().map(|s| s.to_string()).collect();
        Server::spawn("demo", tmp.path(), args, Some(tmp.clone()), default_log()).await
    }

    /// Starts a server with a fresh temporary data dir, logging with the `RUST_LOG` filter
    /// `filter` (e.g. `concord_server=debug`, for tests that prove an event by its debug line).
    pub async fn start_logging(filter: &str, args: &[&str]) -> Server {
        let tmp = Arc::new(tempfile::tempdir().unwrap());
        let args = args.iter().map(|s| s.to_string()).collect();
        Server::spawn(
            "serve",
            tmp.path(),
            args,
            Some(tmp.clone()),
            filter.to_string(),
        )
        .await
    }

    async fn spawn(
        command: &'static str,
        data_dir: &Path,
        args: Vec<String>,
        tmp: Option<Arc<tempfile::TempDir>>,
        rust_log: String,
    ) -> Server {
        let listen = args.iter().any(|a| a == "--listen");
        let mut cmd = Command::new(concord_bin());
        cmd.arg(command).arg("--data-dir").arg(data_dir);
        if !listen {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(&args)
            .env("RUST_LOG", &rust_log)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("starting concord");
        let stdout = child.stdout.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let log2 = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[concord] {line}");
                if let Some(at) = line.find("listening addr=") {
                    let rest = &line[at + "listening addr=".len()..];
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    if let Some(tx) = addr_tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                log2.lock().unwrap().push(line);
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(60), addr_rx)
            .await
            .expect("server did not report its address within 60 s")
            .expect("server exited before listening");
        Server {
            child,
            addr: addr.parse().unwrap(),
            data_dir: data_dir.to_path_buf(),
            _tmp: tmp,
            log,
            admin_token: admin_token(&args),
            args,
            rust_log,
            command,
        }
    }

    /// Restarts on the same data dir and arguments (a new port unless `--listen` was given).
    pub async fn restart(&mut self) {
        let _ = self.child.kill().await;
        let next = Server::spawn(
            self.command,
            &self.data_dir,
            self.args.clone(),
            self._tmp.clone(),
            self.rust_log.clone(),
        )
        .await;
        *self = next;
    }

    pub fn ws_url(&self, doc: &str) -> String {
        format!("ws://{}/ws/{}", self.addr, doc)
    }

    /// The `wss://` URL of `doc`, by the name test certificates carry ([`crate::tls`]).
    pub fn wss_url(&self, doc: &str) -> String {
        format!("wss://localhost:{}/ws/{}", self.addr.port(), doc)
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}{}", self.addr.port(), path)
    }

    /// The URL of `path`, carrying [`Server::admin_token`] when the server checks tokens.
    pub fn http_url(&self, path: &str) -> String {
        match &self.admin_token {
            Some(token) => {
                let sep = if path.contains('?') { '&' } else { '?' };
                format!("http://{}{path}{sep}token={token}", self.addr)
            }
            None => format!("http://{}{}", self.addr, path),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("server already exited") as i32
    }

    /// `kill -9`: no chance to flush anything.
    pub async fn kill9(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn sigterm(&mut self) -> ExitStatus {
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("server did not exit within 30 s of SIGTERM")
            .unwrap()
    }

    /// Sends SIGINT (Ctrl-C) and waits for the exit status.
    pub async fn sigint(&mut self) -> ExitStatus {
        unsafe { libc::kill(self.pid(), libc::SIGINT) };
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("server did not exit within 30 s of SIGINT")
            .unwrap()
    }

    /// Whether the server logged a line containing every one of `needles`.
    pub fn logged(&self, needles: &[&str]) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    }

    /// How many logged lines contain every one of `needles`.
    pub fn logged_count(&self, needles: &[&str]) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Waits until at least `n` logged lines contain every one of `needles`; `Err` with the
    /// count reached after `limit`.
    pub async fn wait_logged(
        &self,
        needles: &[&str],
        n: usize,
        limit: Duration,
    ) -> Result<(), usize> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let seen = self.logged_count(needles);
            if seen >= n {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(seen);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until this node's status shows a live link to each of `peers` (node ids); panics
    /// after `within`.
    pub async fn wait_linked_to(&self, peers: &[&str], within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (_, body) = http_get(&self.http_url("/api/status")).await;
            let s: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let linked: std::collections::HashSet<&str> = s["peers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["connected"] == true)
                .filter_map(|p| p["node_id"].as_str())
                .collect();
            if peers.iter().all(|p| linked.contains(p)) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} links {linked:?}, expected {peers:?}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resident memory of the server process, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

/// An admin token for every document when `args` hold `--auth-secret SECRET`.
fn admin_token(args: &[String]) -> Option<String> {
    let at = args.iter().position(|a| a == "--auth-secret")?;
    Some(mint(
        args.get(at + 1)?,
        &[("*", "write")],
        true,
        Duration::from_secs(3600),
    ))
}

/// Mints an HS256 client token from `secret` granting `docs` (pattern, "read"|"write"), valid for
/// `valid_for`.
pub fn mint(secret: &str, docs: &[(&str, &str)], admin: bool, valid_for: Duration) -> String {
    use concord_server::auth::{Access, token};
    let docs = docs
        .iter()
        .map(|(p, a)| {
            let access = match *a {
                "read" => Access::Read,
                "write" => Access::Write,
                _ => Access::None,
            };
            (p.to_string(), access)
        })
        .collect();
    let claims = token::Claims {
        exp: token::now_secs() + valid_for.as_secs(),
        nbf: None,
        sub: Some("test".into()),
        docs,
        admin,
    };
    token::mint(secret, &claims)
}

/// The `RUST_LOG` filter of servers started without one: `$CONCORD_TEST_LOG`, or `info`.
fn default_log() -> String {
    std::env::var("CONCORD_TEST_LOG").unwrap_or_else(|_| "info".into())
}

/// The HTTP status of a WebSocket upgrade to `url` (101 when it is upgraded) and the body of a
/// refusal, with an optional `Authorization` header.
pub async fn upgrade_status(url: &str, authorization: Option<&str>) -> (u16, String) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    if let Some(a) = authorization {
        req.headers_mut()
            .insert("authorization", a.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((_ws, resp)) => (resp.status().as_u16(), String::new()),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("upgrade to {url} failed without an HTTP answer: {e}"),
    }
}

/// GET `url`; returns the status and body.
pub async fn http_get(url: &str) -> (u16, Vec<u8>) {
    let resp = reqwest::get(url).await.expect("HTTP request");
    let status = resp.status().as_u16();
    (status, resp.bytes().await.unwrap().to_vec())
}

/// The document `doc` as the server has it (via the HTTP read API), or `None` on 404.
pub async fn server_doc(server: &Server, doc: &str) -> Option<concord_crdt::DocState> {
    let (status, body) = http_get(&server.http_url(&format!("/api/docs/{doc}/update"))).await;
    match status {
        200 => {
            Some(concord_crdt::DocState::load([body.as_slice()]).expect("server sent a bad update"))
        }
        404 => None,
        other => panic!(
            "GET update of {doc}: status {other}: {}",
            String::from_utf8_lossy(&body)
        ),
    }
}

/// Asserts that `server_state` contains everything in `client_state` (a v1 update): applying
/// it changes nothing.
pub fn assert_contains(server_state: &mut concord_crdt::DocState, client_state: &[u8], what: &str) {
    let update = concord_crdt::IncomingUpdate::decode(client_state).unwrap();
    let applied = server_state.apply_update(update).unwrap();
    assert_eq!(
        applied,
        concord_crdt::Applied::Unchanged,
        "{what}: the server lacks something the client received"
    );
}
