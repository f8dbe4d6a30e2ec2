//! The configuration of the real binary: a `--config` TOML file under flags and env vars, as
//! `concord config` reports it and as a served request feels it; config file errors; secrets
//! read from files (accepted, and printed or logged nowhere); JSON logs; and no log line per
//! update at the default level.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_tests::{YClient, concord_bin, mint, upgrade_status};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(30);

/// `concord ARGS` with `env` and no other `CONCORD_*` variable, to its end.
async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = command(args, env);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("concord did not exit within 30 s")
        .expect("running concord")
}

fn command(args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(concord_bin());
    for (name, _) in std::env::vars() {
        if name.starts_with("CONCORD_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `concord config ARGS`'s output, which must succeed.
async fn effective(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run(&[&["config"], args].concat(), env).await;
    assert!(
        out.status.success(),
        "concord config: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The line of `concord config`'s output for `name`.
fn line_of<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| {
            l.strip_prefix("# ")
                .unwrap_or(l)
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .unwrap_or_else(|| panic!("no line for {name} in:\n{out}"))
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// A `concord serve` process on a free port; its log lines (stdout and stderr) are collected.
struct Node {
    _child: tokio::process::Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _data: tempfile::TempDir,
}

impl Node {
    async fn start(args: &[&str], env: &[(&str, &str)]) -> Node {
        let data = tempfile::tempdir().unwrap();
        let data_dir = data.path().to_str().unwrap();
        let head = ["serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir];
        let mut cmd = command(&[&head[..], args].concat(), env);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting concord");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = tokio::sync::mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for (stream, name) in [
            (
                Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                "out",
            ),
            (Box::new(stderr), "err"),
        ] {
            let log = log.clone();
            let addr_tx = addr_tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[concord {name}] {line}");
                    if let Some(addr) = listening_addr(&line) {
                        let _ = addr_tx.send(addr);
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        drop(addr_tx);
        let mut addr_rx = addr_rx;
        let addr = tokio::time::timeout(WAIT, addr_rx.recv())
            .await
            .expect("no `listening` line within 30 s")
            .expect("concord exited before listening");
        Node {
            _child: child,
            addr: addr.parse().unwrap(),
            log,
            _data: data,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    async fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.lines().iter().any(|l| pred(l)) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line {what} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn ws(&self, doc: &str) -> String {
        format!("ws://{}/ws/{doc}", self.addr)
    }
}

/// The address of a `listening` line, text or JSON.
fn listening_addr(line: &str) -> Option<String> {
    if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(line) {
        if o.get("msg")?.as_str()? != "listening" {
            return None;
        }
        return o.get("addr")?.as_str().map(String::from);
    }
    let at = line.find("listening addr=")?;
    let rest = &line[at + "listening addr=".len()..];
    rest.split_whitespace().next().map(String::from)
}

/// `concord config` shows each setting with its winner: the flag over the env var over the file
/// over the default.
#[tokio::test]
async fn concord_config_shows_flag_over_env_over_file_over_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "concord.toml",
        "send-queue = 100\nregion = \"file-region\"\nmax-doc-name = 40\n\
         [tls]\npeer-tls-required = true\n",
    );
    let path = file.to_str().unwrap();
    let out = effective(
        &["--config", path, "--send-queue", "300"],
        &[
            ("CONCORD_SEND_QUEUE", "200"),
            ("CONCORD_REGION", "env-region"),
        ],
    )
    .await;
    assert_eq!(line_of(&out, "send-queue"), "send-queue = 300  # flag");
    assert_eq!(
        line_of(&out, "region"),
        "region = \"env-region\"  # env CONCORD_REGION"
    );
    assert_eq!(
        line_of(&out, "max-doc-name"),
        format!("max-doc-name = 40  # file {path}")
    );
    assert_eq!(
        line_of(&out, "peer-tls-required"),
        format!("peer-tls-required = true  # file {path}")
    );
    assert_eq!(line_of(&out, "doc-queue"), "doc-queue = 1024  # default");
    // The config file can come from the environment too.
    let out = effective(&[], &[("CONCORD_CONFIG", path)]).await;
    assert_eq!(
        line_of(&out, "send-queue"),
        format!("send-queue = 100  # file {path}")
    );
    assert_eq!(
        line_of(&out, "config"),
        format!("# config = \"{path}\"  # env CONCORD_CONFIG")
    );
}

/// The same precedence, felt by a client: `--max-doc-name` from the file, the env var, the flag
/// decides which document names get 400 before the upgrade.
#[tokio::test]
async fn a_served_limit_follows_flag_over_env_over_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "concord.toml", "max-doc-name = 10\n");
    let path = file.to_str().unwrap();
    let name = |n: usize| "d".repeat(n);
    let status = |node: &Node, n: usize| {
        let url = node.ws(&name(n));
        async move { upgrade_status(&url, None).await.0 }
    };

    let from_file = Node::start(&["--config", path], &[]).await;
    assert_eq!(status(&from_file, 10).await, 101);
    assert_eq!(
        status(&from_file, 11).await,
        400,
        "the file's limit is not applied"
    );

    let from_env = Node::start(&["--config", path], &[("CONCORD_MAX_DOC_NAME", "20")]).await;
    assert_eq!(
        status(&from_env, 20).await,
        101,
        "the env var does not beat the file"
    );
    assert_eq!(status(&from_env, 21).await, 400);

    let from_flag = Node::start(
        &["--config", path, "--max-doc-name", "30"],
        &[("CONCORD_MAX_DOC_NAME", "20")],
    )
    .await;
    assert_eq!(
        status(&from_flag, 30).await,
        101,
        "the flag does not beat the env var"
    );
    assert_eq!(status(&from_flag, 31).await, 400);
}

/// An unknown key or a bad value stops `serve` and `config` alike, with the key and the file
/// named, before anything listens.
#[tokio::test]
async fn config_file_errors_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = write(dir.path(), "unknown.toml", "max-doc-nam = 10\n");
    let bad = write(dir.path(), "bad.toml", "[auth]\ntimeout = \"soon\"\n");
    for (file, expected) in [
        (
            &unknown,
            format!(
                "error: {}: unknown key `max-doc-nam` (did you mean `max-doc-name`?)",
                unknown.display()
            ),
        ),
        (
            &bad,
            format!(
                "error: {}: key `auth.timeout`: invalid value 'soon' for '--auth-timeout",
                bad.display()
            ),
        ),
    ] {
        for command in ["serve", "config"] {
            let data = dir.path().join("data");
            let out = run(
                &[
                    command,
                    "--config",
                    file.to_str().unwrap(),
                    "--listen",
                    "127.0.0.1:0",
                    "--data-dir",
                    data.to_str().unwrap(),
                ],
                &[],
            )
            .await;
            let stderr = text(&out.stderr);
            assert!(
                !out.status.success(),
                "{command} accepted {}",
                file.display()
            );
            assert!(
                stderr.starts_with(&expected),
                "{command}: expected {expected:?}, got {stderr:?}"
            );
            assert!(
                out.stdout.is_empty(),
                "{command} printed {:?}",
                text(&out.stdout)
            );
        }
    }
    let missing = dir.path().join("missing.toml");
    let out = run(&["serve", "--config", missing.to_str().unwrap()], &[]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!(
            "cannot read the config file {}",
            missing.display()
        )),
        "{}",
        text(&out.stderr)
    );
}

/// Secrets from files: the auth secret from the config file's `[auth] secret-file`, the peer
/// secret from `CONCORD_PEER_SECRET_FILE`. A token minted from the file's secret (by `concord
/// token --auth-secret-file`) is accepted, one minted from another secret is not; a peer given
/// the same secret inline links up. Neither secret appears in `concord config`'s output or in any
/// log line.
#[tokio::test]
async fn secrets_from_files_work_and_are_never_shown() {
    const AUTH: &str = "auth-secret-from-a-file-7f3a";
    const PEER: &str = "peer-secret-from-a-file-91c2";
    let dir = tempfile::tempdir().unwrap();
    let auth_file = write(dir.path(), "auth-secret", &format!("{AUTH}\n"));
    let peer_file = write(dir.path(), "peer-secret", &format!("{PEER}\n"));
    let config = write(
        dir.path(),
        "concord.toml",
        &format!(
            "region = \"eu\"\n[auth]\nsecret-file = \"{}\"\n",
            auth_file.display()
        ),
    );
    let args = ["--config", config.to_str().unwrap()];
    let env = [("CONCORD_PEER_SECRET_FILE", peer_file.to_str().unwrap())];

    let out = run(&[&["config"], &args[..]].concat(), &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        !shown.contains(AUTH) && !shown.contains(PEER),
        "a secret in:\n{shown}"
    );
    assert_eq!(
        line_of(&shown, "auth-secret"),
        format!(
            "# auth-secret = <redacted>  # read from --auth-secret-file {}",
            auth_file.display()
        )
    );
    assert_eq!(
        line_of(&shown, "peer-secret-file"),
        format!(
            "peer-secret-file = \"{}\"  # env CONCORD_PEER_SECRET_FILE",
            peer_file.display()
        )
    );

    let eu = Node::start(&args, &env).await;
    // `concord token` reads the same file.
    let minted = run(
        &[
            "token",
            "--auth-secret-file",
            auth_file.to_str().unwrap(),
            "--doc",
            "notes=write",
        ],
        &[],
    )
    .await;
    assert!(minted.status.success(), "{}", text(&minted.stderr));
    let token = text(&minted.stdout).trim().to_string();
    let (code, body) = upgrade_status(&format!("{}?token={token}", eu.ws("notes")), None).await;
    assert_eq!(
        code, 101,
        "a token from the file's secret is refused: {body}"
    );
    let forged = mint(
        "some-other-secret",
        &[("notes", "write")],
        false,
        Duration::from_secs(60),
    );
    let (code, _) = upgrade_status(&format!("{}?token={forged}", eu.ws("notes")), None).await;
    assert_eq!(code, 401, "a token from another secret is accepted");
    // The peer secret file holds the secret a peer configured inline proves.
    let peers = format!("http://{}", eu.addr);
    let us = Node::start(
        &["--region", "us", "--peer-secret", PEER, "--peers", &peers],
        &[],
    )
    .await;
    for node in [&eu, &us] {
        node.wait_line("`peer link up`", |l| l.contains("peer link up"))
            .await;
    }
    for line in eu.lines() {
        assert!(
            !line.contains(AUTH) && !line.contains(PEER),
            "a secret logged: {line}"
        );
    }

    // An empty secret file stops the start, naming the flag and the file.
    let empty = write(dir.path(), "empty", "\n");
    let out = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--peer-secret-file",
            empty.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr).trim_end(),
        format!(
            "error: --peer-secret-file {}: the file is empty",
            empty.display()
        )
    );
}

/// `--log-format json` (here from the config file): every line is one JSON object with `ts`
/// (RFC 3339, UTC), `level`, `target`, `msg`, the node's `region`, and an event's fields such as
/// `doc`; RUST_LOG still filters.
#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_event_fields() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "concord.toml",
        "log-format = \"json\"\nregion = \"eu\"\n",
    );
    let node = Node::start(
        &["--config", config.to_str().unwrap()],
        &[("RUST_LOG", "info,concord_server::connection=debug")],
    )
    .await;
    let client = YClient::connect(&node.ws("notes")).await;
    node.wait_line("`connected` with doc=notes", |l| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|v| v["msg"] == "connected" && v["doc"] == "notes")
    })
    .await;
    drop(client);
    let lines = node.lines();
    assert!(lines.len() >= 3, "{lines:?}");
    for line in &lines {
        let Ok(Value::Object(o)) = serde_json::from_str::<Value>(line) else {
            panic!("not a JSON object: {line}");
        };
        for key in ["ts", "level", "target", "msg"] {
            assert!(o.get(key).is_some_and(Value::is_string), "no {key}: {line}");
        }
        let ts = o["ts"].as_str().unwrap();
        assert!(ts.ends_with('Z'), "ts not UTC: {line}");
        humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("ts {ts}: {e}"));
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&o["level"].as_str().unwrap()),
            "{line}"
        );
        assert_eq!(
            o["region"], "eu",
            "a line without the node's region: {line}"
        );
    }
    let listening = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["msg"] == "listening")
        .unwrap();
    assert_eq!(listening["addr"], node.addr.to_string());
    assert_eq!(listening["level"], "INFO");
    // RUST_LOG kept debug lines of other modules out.
    assert!(
        lines.iter().all(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["level"] != "DEBUG" || v["target"] == "concord_server::connection"
        }),
        "{lines:?}"
    );
}

/// At the default level, the log does not grow with traffic: a few hundred updates between two
/// clients add no line (connections and deliveries are logged at debug).
#[tokio::test]
async fn the_default_log_has_no_line_per_update_or_delivery() {
    const UPDATES: usize = 300;
    let node = Node::start(&[], &[]).await;
    let a = YClient::connect(&node.ws("busy")).await;
    let b = YClient::connect(&node.ws("busy")).await;
    a.append("t", "x");
    b.wait_text("t", "x").await;
    let before = node.lines().len();
    let mut expected = String::from("x");
    for i in 0..UPDATES {
        let (from, to) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        from.append("t", "y");
        expected.push('y');
        if i % 50 == 49 {
            to.wait_text("t", &expected).await;
        }
    }
    a.wait_text("t", &expected).await;
    b.wait_text("t", &expected).await;
    let after = node.lines();
    assert!(
        after.len() <= before + 2,
        "{} lines logged during {UPDATES} updates:\n{}",
        after.len() - before,
        after[before..].join("\n")
    );
}
