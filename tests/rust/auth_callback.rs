//! `--auth-url` end to end: the real binary asks a small backend run by the test (axum on
//! 127.0.0.1) about every WebSocket connection and operator call, and does what it answers:
//! "write" lets a client edit, "read" lets it follow, "none" is a 403 before the upgrade, and a
//! backend that is slow or down is a 503 before the upgrade (fail closed). Answers are cached
//! for `--auth-cache`; the URL's credentials and the clients' tokens never reach the log.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use concord_tests::{Server, YClient, upgrade_status};
use serde_json::{Value, json};

const WRITER: &str = "tok-writer-5f1c";
const READER: &str = "tok-reader-9a2e";
const ADMIN: &str = "tok-admin-c07d";
const STRANGER: &str = "tok-stranger-41b8";

/// What the test backend does with a question.
#[derive(Clone, Copy)]
enum Mode {
    /// Answers by token: WRITER writes, READER reads, ADMIN writes and operates, others nothing.
    ByToken,
    /// Never answers.
    Hang,
}

#[derive(Default)]
struct Seen {
    count: AtomicUsize,
    questions: Mutex<Vec<Value>>,
}

struct Backend {
    url: String,
    seen: Arc<Seen>,
}

impl Backend {
    async fn start(mode: Mode) -> Backend {
        let seen = Arc::new(Seen::default());
        let app = Router::new()
            .route("/auth", post(answer))
            .with_state((mode, seen.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Backend {
            url: format!("http://{addr}/auth"),
            seen,
        }
    }

    fn calls(&self) -> usize {
        self.seen.count.load(Ordering::SeqCst)
    }

    fn questions(&self) -> Vec<Value> {
        self.seen.questions.lock().unwrap().clone()
    }
}

async fn answer(
    State((mode, seen)): State<(Mode, Arc<Seen>)>,
    axum::Json(question): axum::Json<Value>,
) -> Response {
    seen.questions.lock().unwrap().push(question.clone());
    seen.count.fetch_add(1, Ordering::SeqCst);
    if let Mode::Hang = mode {
        return std::future::pending().await;
    }
    let answer = match question["token"].as_str() {
        Some(WRITER) => json!({"access": "write", "user": "wanda"}),
        Some(READER) => json!({"access": "read", "user": "rita"}),
        Some(ADMIN) => json!({"access": "write", "user": "ops", "admin": true}),
        _ => json!({"access": "none", "user": "nobody"}),
    };
    axum::Json(answer).into_response()
}

/// A URL on which nothing listens.
fn down_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/auth")
}

async fn serve(auth_url: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--auth-url", auth_url];
    args.extend_from_slice(extra);
    Server::start(&args).await
}

fn ws(server: &Server, doc: &str, token: &str) -> String {
    format!("{}?token={token}", server.ws_url(doc))
}

/// GET `path` with `Authorization: Bearer token`.
async fn get(server: &Server, path: &str, token: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!("http://{}{path}", server.addr))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn assert_secrets_never_logged(server: &Server, secrets: &[&str]) {
    for line in server.log.lock().unwrap().iter() {
        for secret in secrets {
            assert!(!line.contains(secret), "the log shows {secret:?}: {line}");
        }
    }
}

#[tokio::test]
async fn a_write_answer_lets_a_client_edit_for_everyone() {
    let backend = Backend::start(Mode::ByToken).await;
    let server = serve(&backend.url, &[]).await;
    let a = YClient::connect(&ws(&server, "team/board", WRITER)).await;
    let b = YClient::connect(&ws(&server, "team/board", WRITER)).await;
    a.append("t", "hello");
    b.wait_text("t", "hello").await;
    let (status, text) = get(&server, "/api/docs/team/board/text/t", WRITER).await;
    assert_eq!(
        (status, text.as_str()),
        (200, "hello"),
        "the edit was not stored"
    );
    // What the backend was asked: the document and the token, as the client sent them.
    let first = &backend.questions()[0];
    assert_eq!(first["doc"], "team/board");
    assert_eq!(first["token"], WRITER);
    assert_eq!(first["headers"]["authorization"], Value::Null);
    assert_secrets_never_logged(&server, &[WRITER]);
}

#[tokio::test]
async fn a_read_answer_lets_a_client_follow() {
    let backend = Backend::start(Mode::ByToken).await;
    let server = serve(&backend.url, &[]).await;
    let writer = YClient::connect(&ws(&server, "wiki/home", WRITER)).await;
    writer.append("t", "before");
    let reader = YClient::connect(&ws(&server, "wiki/home", READER)).await;
    reader.wait_text("t", "before").await;
    writer.append("t", " after");
    reader.wait_text("t", "before after").await;
    // HTTP reads need read access too, which "read" gives.
    let (status, text) = get(&server, "/api/docs/wiki/home/text/t", READER).await;
    assert_eq!((status, text.as_str()), (200, "before after"));
    // Its own edit goes nowhere: the server answers with the y-protocols auth message
    // (permission denied), and neither the writer nor the store ever see the edit. The writer's
    // next edit reaches the room after the reader's would have, so once it is stored, the
    // reader's edit would be too.
    reader.append("r", "vandalism");
    reader
        .wait(|s| s.frames.iter().any(|f| f.first() == Some(&2)))
        .await;
    writer.append("t", "!");
    reader.wait_text("t", "before after!").await;
    let (status, text) = get(&server, "/api/docs/wiki/home/text/t", WRITER).await;
    assert_eq!((status, text.as_str()), (200, "before after!"));
    let (_, stored) = get(&server, "/api/docs/wiki/home/text/r", WRITER).await;
    assert_eq!(stored, "", "a read-only client's edit was stored");
    assert_eq!(
        writer.text("r"),
        "",
        "a read-only client's edit was relayed"
    );
}

#[tokio::test]
async fn a_none_answer_is_a_403_before_the_upgrade() {
    let backend = Backend::start(Mode::ByToken).await;
    let server = serve(&backend.url, &[]).await;
    let (status, _) = upgrade_status(&ws(&server, "team/board", STRANGER), None).await;
    assert_eq!(status, 403);
    // Without any credentials the backend is still asked (it may know a cookie), and says none.
    let (status, _) = upgrade_status(&server.ws_url("team/board"), None).await;
    assert_eq!(status, 403);
    assert_eq!(backend.questions()[1]["token"], Value::Null);
    let (status, _) = get(&server, "/api/docs/team/board/update", STRANGER).await;
    assert_eq!(status, 403);
    server
        .wait_logged(
            &["access refused", "team/board"],
            1,
            Duration::from_secs(10),
        )
        .await
        .expect("not logged");
    assert_secrets_never_logged(&server, &[STRANGER]);
}

#[tokio::test]
async fn a_slow_backend_is_a_503_before_the_upgrade() {
    let backend = Backend::start(Mode::Hang).await;
    let server = serve(&backend.url, &["--auth-timeout", "300ms"]).await;
    let started = std::time::Instant::now();
    let (status, body) = upgrade_status(&ws(&server, "team/board", WRITER), None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("did not answer"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(backend.calls(), 1);
}

#[tokio::test]
async fn a_backend_that_is_down_is_a_503_and_its_url_secrets_stay_out_of_the_log() {
    let url = down_url().replace("http://", "http://concord:s3cr3t-pw@") + "?key=hunter2-key";
    let server = serve(&url, &[]).await;
    let (status, upgrade_body) = upgrade_status(&ws(&server, "team/board", WRITER), None).await;
    assert_eq!(status, 503, "{upgrade_body}");
    let (status, status_body) = get(&server, "/api/status", ADMIN).await;
    assert_eq!(status, 503, "{status_body}");
    // The client learns that the backend did not answer, not how (that is for the log).
    for body in [upgrade_body, status_body] {
        assert!(body.contains("did not answer"), "{body}");
        assert!(!body.contains("unreachable"), "{body}");
        assert!(
            !body.contains("s3cr3t-pw") && !body.contains("hunter2-key"),
            "{body}"
        );
    }
    server
        .wait_logged(
            &["access refused", "503", "unreachable"],
            1,
            Duration::from_secs(10),
        )
        .await
        .expect("not logged");
    assert_secrets_never_logged(&server, &["s3cr3t-pw", "hunter2-key", WRITER, ADMIN]);
}

#[tokio::test]
async fn answers_are_cached_for_the_ttl() {
    let backend = Backend::start(Mode::ByToken).await;
    let server = serve(&backend.url, &["--auth-cache", "60s"]).await;
    let a = YClient::connect(&ws(&server, "team/board", WRITER)).await;
    let b = YClient::connect(&ws(&server, "team/board", WRITER)).await;
    assert_eq!(
        backend.calls(),
        1,
        "the second connection asked the backend again"
    );
    // Another document is another question.
    let c = YClient::connect(&ws(&server, "team/other", WRITER)).await;
    assert_eq!(backend.calls(), 2);
    drop((a, b, c));
}

#[tokio::test]
async fn the_status_endpoint_needs_admin_from_the_callback() {
    let backend = Backend::start(Mode::ByToken).await;
    let server = serve(&backend.url, &[]).await;
    let (status, body) = get(&server, "/api/status", ADMIN).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("connections"), "{body}");
    let (status, _) = get(&server, "/api/status", WRITER).await;
    assert_eq!(status, 403);
    // Operator endpoints ask about no document.
    assert!(backend.questions().iter().all(|q| q["doc"].is_null()));
    // /healthz stays open and asks nobody.
    let (status, _) = get(&server, "/healthz", STRANGER).await;
    assert_eq!(status, 200);
    assert_eq!(backend.calls(), 2);
}
