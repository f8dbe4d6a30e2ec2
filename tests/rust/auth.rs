//! Access control through the real binary and real sockets: every outcome of the issue's table
//! (401 and 403 before the upgrade, read-only connections, expiry mid-connection, HTTP reads and
//! operator endpoints), key rotation and the two classic JWT attacks, and the secure default
//! (no auth: loopback only).

use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use concord_tests::cluster::Cluster;
use concord_tests::{Server, WAIT, YClient, concord_bin, http_get, mint, upgrade_status};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "test-auth-secret";

fn now() -> u64 {
    concord_server::auth::token::now_secs()
}

fn hour() -> Duration {
    Duration::from_secs(3600)
}

fn with_token(url: &str, token: &str) -> String {
    format!("{url}?token={token}")
}

/// A JWT with the given header and claims and a garbage signature part.
fn forged(header: serde_json::Value, claims: serde_json::Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string()),
        B64.encode(signature)
    )
}

#[tokio::test]
async fn tokens_are_checked_before_the_upgrade() {
    let server = Server::start(&["--auth-secret", SECRET]).await;
    let url = server.ws_url("team/notes");
    let valid = mint(SECRET, &[("team/*", "write")], false, hour());
    let claims = json!({"exp": now() + 3600, "docs": {"*": "write"}});
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("no token", url.clone(), 401, "token is required"),
        (
            "not a JWT",
            with_token(&url, "garbage"),
            401,
            "not a well-formed JWT",
        ),
        (
            "another secret",
            with_token(
                &url,
                &mint("other-secret", &[("*", "write")], false, hour()),
            ),
            401,
            "signature is invalid",
        ),
        (
            "expired",
            with_token(
                &url,
                &jsonwebtoken::encode(
                    &Header::new(Algorithm::HS256),
                    &json!({"exp": now() - 10, "docs": {"*": "write"}}),
                    &EncodingKey::from_secret(SECRET.as_bytes()),
                )
                .unwrap(),
            ),
            401,
            "expired",
        ),
        (
            "not valid yet",
            with_token(
                &url,
                &jsonwebtoken::encode(
                    &Header::new(Algorithm::HS256),
                    &json!({"exp": now() + 3600, "nbf": now() + 600, "docs": {"*": "write"}}),
                    &EncodingKey::from_secret(SECRET.as_bytes()),
                )
                .unwrap(),
            ),
            401,
            "not valid yet",
        ),
        (
            "no exp",
            with_token(
                &url,
                &jsonwebtoken::encode(
                    &Header::new(Algorithm::HS256),
                    &json!({"docs": {"*": "write"}}),
                    &EncodingKey::from_secret(SECRET.as_bytes()),
                )
                .unwrap(),
            ),
            401,
            "`exp`",
        ),
        (
            "alg none",
            with_token(
                &url,
                &forged(json!({"alg": "none", "typ": "JWT"}), claims.clone(), b""),
            ),
            401,
            "not a well-formed JWT",
        ),
        (
            "a token for team/* on other/x",
            with_token(&server.ws_url("other/x"), &valid),
            403,
            "does not grant access",
        ),
    ];
    for (what, url, status, reason) in &cases {
        let (got, body) = upgrade_status(url, None).await;
        assert_eq!(got, *status, "{what}: {body}");
        assert!(
            body.contains(reason),
            "{what}: reason {body:?} lacks {reason:?}"
        );
    }
    // The right token, by query and by header.
    assert_eq!(upgrade_status(&with_token(&url, &valid), None).await.0, 101);
    let bearer = format!("Bearer {valid}");
    assert_eq!(upgrade_status(&url, Some(&bearer)).await.0, 101);
    let c = YClient::connect(&with_token(&url, &valid)).await;
    c.append("t", "hello");

    // Every refusal is logged at warn with its reason, and no log line holds a token.
    server
        .wait_logged(&["WARN", "access refused"], cases.len(), WAIT)
        .await
        .expect("every refusal is logged");
    assert_eq!(
        server.logged_count(&["WARN", "access refused"]),
        cases.len(),
        "one warning per refusal"
    );
    server
        .wait_logged(
            &["access refused", "doc=other/x", "sub=test", "status=403"],
            1,
            WAIT,
        )
        .await
        .expect("not logged");
    let log = server.log.lock().unwrap().join("\n");
    for (what, url, _, _) in &cases {
        if let Some((_, token)) = url.split_once("?token=") {
            assert!(!log.contains(token), "{what}: the token was logged");
        }
    }
    assert!(!log.contains(&valid), "a valid token was logged");
}

/// Keys for the public-key algorithms, generated per test (the RS256 pair is a fixture: ring
/// cannot generate RSA keys).
struct Keys {
    dir: tempfile::TempDir,
    es: rcgen::KeyPair,
    ed: rcgen::KeyPair,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        std::fs::write(dir.path().join("es-2026.pem"), es.public_key_pem()).unwrap();
        std::fs::write(dir.path().join("ed-2026.pem"), ed.public_key_pem()).unwrap();
        std::fs::write(
            dir.path().join("rs-2026.pem"),
            include_str!("../fixtures/rs256-test-public.pem"),
        )
        .unwrap();
        Keys { dir, es, ed }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn sign(&self, alg: Algorithm, kid: Option<&str>, claims: &serde_json::Value) -> String {
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(self.es.serialize_pem().as_bytes()),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(self.ed.serialize_pem().as_bytes()),
            Algorithm::RS256 => {
                EncodingKey::from_rsa_pem(include_bytes!("../fixtures/rs256-test-private.pem"))
            }
            other => panic!("no key for {other:?}"),
        }
        .unwrap();
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }
}

#[tokio::test]
async fn public_keys_are_chosen_by_kid_and_algorithms_never_confused() {
    let keys = Keys::new();
    let server = Server::start(&[
        "--auth-public-key",
        &keys.path("es-2026.pem"),
        "--auth-public-key",
        &keys.path("ed-2026.pem"),
        "--auth-public-key",
        &keys.path("rs-2026.pem"),
    ])
    .await;
    let url = server.ws_url("team/notes");
    let claims = json!({"exp": now() + 3600, "docs": {"team/*": "write"}, "sub": "ann"});
    let accepted = [
        (
            "ES256 with its kid",
            keys.sign(Algorithm::ES256, Some("es-2026"), &claims),
        ),
        (
            "EdDSA with its kid",
            keys.sign(Algorithm::EdDSA, Some("ed-2026"), &claims),
        ),
        (
            "EdDSA without kid",
            keys.sign(Algorithm::EdDSA, None, &claims),
        ),
        (
            "RS256 with its kid",
            keys.sign(Algorithm::RS256, Some("rs-2026"), &claims),
        ),
    ];
    for (what, token) in &accepted {
        assert_eq!(
            upgrade_status(&with_token(&url, token), None).await,
            (101, String::new()),
            "{what}"
        );
    }
    // An HS256 token "signed" with the bytes of a public key: the classic confusion attack.
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(keys.es.public_key_pem().as_bytes()),
    )
    .unwrap();
    let refused = [
        (
            "HS256 signed with the public key's bytes",
            confused,
            "HS256",
        ),
        (
            "ES256 naming the EdDSA key",
            keys.sign(Algorithm::ES256, Some("ed-2026"), &claims),
            "key id",
        ),
        (
            "an unknown kid",
            keys.sign(Algorithm::ES256, Some("retired"), &claims),
            "key id",
        ),
        (
            "alg none",
            forged(json!({"alg": "none"}), claims.clone(), b""),
            "well-formed",
        ),
    ];
    for (what, token, reason) in &refused {
        let (status, body) = upgrade_status(&with_token(&url, token), None).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(body.contains(reason), "{what}: {body:?} lacks {reason:?}");
    }
}

#[tokio::test]
async fn read_only_clients_see_everything_and_change_nothing() {
    let server = Server::start(&["--auth-secret", SECRET]).await;
    let url = server.ws_url("team/board");
    let writer_token = mint(SECRET, &[("team/*", "write")], false, hour());
    // The most specific pattern wins: write on team/*, read on the board.
    let reader_token = mint(
        SECRET,
        &[("team/*", "write"), ("team/board", "read")],
        false,
        hour(),
    );
    let writer = YClient::connect(&with_token(&url, &writer_token)).await;
    writer.append("t", "from the writer;");
    let reader = YClient::connect(&with_token(&url, &reader_token)).await;
    reader.wait_text("t", "from the writer;").await;

    // Its presence reaches the others (viewers show in the presence list).
    reader.set_presence(r#"{"user":"viewer"}"#);
    let id = reader.client_id();
    writer.wait(|s| s.presence_of(id).is_some()).await;

    // Its edits go nowhere, and it is told so, once.
    reader.append("t", "READER-1");
    reader.append("t", "READER-2");
    reader
        .wait(|s| s.frames.iter().any(|f| f.starts_with(&[2, 0])))
        .await;
    writer.append("t", "more;");
    // The reader keeps its own edits locally (where they land depends on client ids).
    reader.wait(|s| s.text("t").contains("more;")).await;
    writer.wait_text("t", "from the writer;more;").await;
    let denied: Vec<Vec<u8>> = reader
        .frames()
        .into_iter()
        .filter(|f| f.starts_with(&[2, 0]))
        .collect();
    assert_eq!(
        denied.len(),
        1,
        "permission-denied is sent once per connection"
    );
    assert!(String::from_utf8_lossy(&denied[0]).contains("read-only"));
    server
        .wait_logged(&["INFO", "read-only client sent an update"], 1, WAIT)
        .await
        .expect("not logged");
    assert_eq!(
        server.logged_count(&["INFO", "read-only client sent an update"]),
        1
    );
    // Not stored either: what the server has, and what a new client gets after a restart.
    let text = |server: &Server| {
        let url = server.http_url("/api/docs/team/board/text/t");
        async move { String::from_utf8(http_get(&url).await.1).unwrap() }
    };
    assert_eq!(text(&server).await, "from the writer;more;");
    drop((writer, reader));
    let mut server = server;
    server.restart().await;
    assert_eq!(text(&server).await, "from the writer;more;");
    let late = YClient::connect(&with_token(&server.ws_url("team/board"), &writer_token)).await;
    assert_eq!(late.text("t"), "from the writer;more;");
}

#[tokio::test]
async fn a_read_only_client_cannot_write_into_another_region() {
    let edges = [(0, 1), (1, 0)];
    let cluster = Cluster::start(
        2,
        &edges,
        Duration::from_millis(20),
        &["--auth-secret", SECRET],
    )
    .await;
    cluster.wait_linked(&edges).await;
    let writer = mint(SECRET, &[("*", "write")], false, hour());
    let reader = mint(SECRET, &[("*", "read")], false, hour());
    let doc = "shared";
    let w0 = YClient::connect(&with_token(&cluster.nodes[0].ws_url(doc), &writer)).await;
    let r0 = YClient::connect(&with_token(&cluster.nodes[0].ws_url(doc), &reader)).await;
    let w1 = YClient::connect(&with_token(&cluster.nodes[1].ws_url(doc), &writer)).await;
    r0.append("t", "INTRUDER");
    r0.wait(|s| s.frames.iter().any(|f| f.starts_with(&[2, 0])))
        .await;
    // A fence: w0's edit, sent after the reader's, reaches region 1; the reader's never does.
    w0.append("t", "fence");
    w1.wait_text("t", "fence").await;
    let text = cluster.wait_converged(doc, WAIT).await;
    assert_eq!(text, "fence", "the read-only edit reached a region");
}

#[tokio::test]
async fn a_token_expiring_mid_connection_closes_it_with_1008() {
    let server = Server::start(&["--auth-secret", SECRET]).await;
    let url = server.ws_url("team/notes");
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": now() + 2, "docs": {"*": "write"}, "sub": "short"}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let c = YClient::connect(&with_token(&url, &token)).await;
    let started = std::time::Instant::now();
    let (code, reason) = tokio::time::timeout(Duration::from_secs(10), c.wait_closed())
        .await
        .expect("the connection outlived its token");
    assert_eq!((code, reason.as_str()), (1008, "token expired"));
    assert!(started.elapsed() <= Duration::from_secs(3));
    // Reconnecting with the same token is refused before the upgrade.
    let (status, body) = upgrade_status(&with_token(&url, &token), None).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn http_reads_and_operator_endpoints_need_their_rights() {
    let server = Server::start(&["--auth-secret", SECRET]).await;
    let writer = mint(SECRET, &[("team/*", "write")], false, hour());
    let c = YClient::connect(&with_token(&server.ws_url("team/notes"), &writer)).await;
    c.append("t", "secret plans");
    let addr = server.addr;
    let get = |path: &str, token: Option<&str>| {
        let url = format!("http://{addr}{path}");
        let token = token.map(str::to_string);
        async move {
            let mut req = reqwest::Client::new().get(url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let text = "/api/docs/team/notes/text/t";
    let reader = mint(SECRET, &[("team/notes", "read")], false, hour());
    let other = mint(SECRET, &[("wiki/*", "write")], false, hour());
    let admin = mint(SECRET, &[], true, hour());
    c.wait(|_| true).await;
    // Written before it is read: wait for the text with the reader's token.
    let deadline = tokio::time::Instant::now() + WAIT;
    while get(text, Some(&reader)).await != (200, "secret plans".into()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the text never became readable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(text, None).await.0, 401);
    assert_eq!(get(text, Some("garbage")).await.0, 401);
    assert_eq!(get(text, Some(&other)).await.0, 403);
    assert_eq!(
        get("/api/docs/team/notes/update", Some(&admin)).await.0,
        403
    );
    // ?token= works on HTTP too (the demo's status calls).
    let (status, body) = http_get(&format!("http://{addr}{text}?token={reader}")).await;
    assert_eq!((status, body.as_slice()), (200, b"secret plans".as_slice()));
    assert_eq!(get("/api/status", None).await.0, 401);
    assert_eq!(get("/api/status", Some(&writer)).await.0, 403);
    let (status, body) = get("/api/status", Some(&admin)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"connections\""));
    assert_eq!(get("/healthz", None).await, (200, "ok".into()));
}

/// Runs `concord serve ARGS` until it logs that it listens (returns None) or exits (returns its
/// output).
async fn start_outcome(args: &[&str]) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(concord_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    let listening = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("listening addr=") {
                return true;
            }
        }
        false
    })
    .await
    .expect("the server neither listened nor exited");
    if listening {
        return None;
    }
    let out = child.wait_with_output().await.unwrap();
    assert!(!out.status.success());
    Some(seen + &String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn without_auth_it_listens_only_on_loopback() {
    let refused = start_outcome(&["--listen", "0.0.0.0:0"])
        .await
        .expect("started on 0.0.0.0 without auth");
    for hint in [
        "without authentication",
        "--auth-secret",
        "--allow-anonymous",
    ] {
        assert!(refused.contains(hint), "{hint:?} missing from: {refused}");
    }
    assert_eq!(start_outcome(&["--listen", "127.0.0.2:0"]).await, None);
    assert_eq!(
        start_outcome(&["--listen", "0.0.0.0:0", "--auth-secret", SECRET]).await,
        None
    );
    let anon = Server::start(&["--listen", "0.0.0.0:0", "--allow-anonymous"]).await;
    assert!(anon.logged(&["WARN", "--allow-anonymous"]));
}

/// An update holding `text` appended to a fresh document's `t` (a client's offline edits).
fn offline_edit(text: &str) -> Vec<u8> {
    use concord_crdt::yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact};
    let doc = Doc::new();
    let t = doc.get_or_insert_text("t");
    t.insert(&mut doc.transact_mut(), 0, text);
    assert_eq!(t.get_string(&doc.transact()), text);
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

#[tokio::test]
async fn a_viewer_cannot_write_through_any_message_nor_touch_anyone_elses_presence() {
    use concord_crdt::encode;
    use concord_crdt::yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
    let server = Server::start(&["--auth-secret", SECRET]).await;
    let url = server.ws_url("team/board");
    let writer_token = mint(SECRET, &[("team/*", "write")], false, hour());
    let reader_token = mint(SECRET, &[("team/*", "read")], false, hour());
    let writer = YClient::connect(&with_token(&url, &writer_token)).await;
    writer.set_presence(r#"{"user":"writer"}"#);
    writer.append("t", "kept;");
    let watcher = YClient::connect(&with_token(&url, &writer_token)).await;
    let writer_id = writer.client_id();
    watcher
        .wait(|s| s.presence_of(writer_id).as_deref() == Some(r#"{"user":"writer"}"#))
        .await;
    let reader = YClient::connect(&with_token(&url, &reader_token)).await;

    // Offline edits arrive as a Step2; a frame may mix messages. None of it is applied.
    reader.send(encode::sync_step2(&offline_edit("OFFLINE-STEP2")));
    let mut mixed = encode::update(&offline_edit("MIXED-UPDATE"));
    mixed.extend(encode::sync_step1(&Default::default()));
    reader.send(mixed);
    // Someone else's presence: rewritten, then removed ("null").
    for json in [r#"{"user":"MALLORY"}"#, "null"] {
        let mut clients = std::collections::HashMap::new();
        clients.insert(
            concord_crdt::yrs::ClientID::new(writer_id),
            AwarenessUpdateEntry {
                clock: 1000,
                json: json.into(),
            },
        );
        reader.send(encode::awareness(&AwarenessUpdate { clients }));
    }
    // Its own presence goes through: the fence for everything it sent before.
    reader.set_presence(r#"{"user":"viewer"}"#);
    let reader_id = reader.client_id();
    watcher
        .wait(|s| s.presence_of(reader_id).as_deref() == Some(r#"{"user":"viewer"}"#))
        .await;
    assert_eq!(
        watcher.presence_of(writer_id).as_deref(),
        Some(r#"{"user":"writer"}"#),
        "a viewer rewrote or removed the writer's presence"
    );
    writer.append("t", "after;");
    watcher.wait_text("t", "kept;after;").await;
    assert!(reader.closed().is_none(), "the viewer stays connected");
    let stored = http_get(&server.http_url("/api/docs/team/board/text/t"))
        .await
        .1;
    assert_eq!(String::from_utf8(stored).unwrap(), "kept;after;");
    assert_eq!(
        reader
            .frames()
            .iter()
            .filter(|f| f.starts_with(&[2, 0]))
            .count(),
        1,
        "told once"
    );
}

#[tokio::test]
async fn refused_upgrades_give_their_place_back() {
    let server = Server::start(&["--auth-secret", SECRET, "--max-connections", "1"]).await;
    let url = server.ws_url("team/notes");
    for _ in 0..20 {
        assert_eq!(
            upgrade_status(&with_token(&url, "garbage"), None).await.0,
            401
        );
        assert_eq!(
            upgrade_status(
                &with_token(
                    &server.ws_url("other/x"),
                    &mint(SECRET, &[("team/*", "write")], false, hour())
                ),
                None
            )
            .await
            .0,
            403
        );
    }
    let token = mint(SECRET, &[("team/*", "write")], false, hour());
    let c = YClient::connect(&with_token(&url, &token)).await;
    c.append("t", "in");
    assert_eq!(upgrade_status(&with_token(&url, &token), None).await.0, 503);
}
