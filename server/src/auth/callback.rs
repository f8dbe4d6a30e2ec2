//! `--auth-url`: asks the app's backend who may do what, for apps whose permissions change too
//! often for tokens (like @y/hub's permission callback or Hocuspocus' `onAuthenticate`).
//!
//! For each new connection or HTTP call Concord POSTs
//! `{"doc": "<name>" | null, "token": ..., "headers": {"cookie": ..., "authorization": ...}}` and
//! the backend answers 200 with `{"access": "write"|"read"|"none", "user": "...", "admin": bool}`.
//! Anything else (another status, a malformed or oversized answer, no connection, no answer
//! within `--auth-timeout`) is a [`CallbackError`], and the gate denies access: the callback
//! fails closed. Answers, "none" included, are reused for `--auth-cache` ([`cache`]); errors
//! never are. Identical questions asked while one is on its way wait for that one's answer
//! instead of asking again.
//!
//! The URL may carry credentials (userinfo, a query key): only [`Callback::shown_url`], without
//! them, is ever logged, and errors never include the URL.

mod cache;

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use concord_crdt::DocName;
use serde::Deserialize;
use tokio::sync::watch;

use super::Credentials;
use super::access::Access;
use cache::{AnswerCache, Key};

/// The largest answer read from the backend; a larger one is an error.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The most answers cached at once (see [`cache`] for what happens when full).
pub const MAX_CACHED: usize = 10_000;

/// The backend's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub access: Access,
    pub user: Option<String>,
    pub admin: bool,
}

/// The answer as the backend sends it. Unknown fields are ignored.
#[derive(Deserialize)]
struct WireAnswer {
    access: Access,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    admin: bool,
}

/// Why there is no answer: access is denied in every case (fail closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error("auth backend did not answer within {0:?}")]
    Timeout(Duration),
    #[error("auth backend unreachable: {0}")]
    Unreachable(String),
    #[error("auth backend answered HTTP {0}")]
    Status(u16),
    #[error("auth backend answer is malformed: {0}")]
    Malformed(String),
    #[error("auth backend answer is over {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
    #[error("{MAX_QUESTIONS} questions to the auth backend are already waiting")]
    Busy,
}

/// Questions to the backend at once, at most. Past it, a request is denied at once (503) rather
/// than queued: a flood of distinct tokens must not become a flood of POSTs.
pub const MAX_QUESTIONS: usize = 256;

type Outcome = Result<Answer, CallbackError>;

pub struct Callback {
    client: reqwest::Client,
    url: reqwest::Url,
    shown_url: String,
    timeout: Duration,
    cache: Mutex<AnswerCache>,
    /// Questions on their way to the backend; later identical ones subscribe to the answer.
    in_flight: Mutex<HashMap<Key, watch::Sender<Option<Outcome>>>>,
    /// Places for questions under [`MAX_QUESTIONS`].
    questions: tokio::sync::Semaphore,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Callback {
    /// `url` must be `http://` or `https://`; `cache_ttl` zero disables the cache.
    pub fn new(url: String, cache_ttl: Duration, timeout: Duration) -> anyhow::Result<Self> {
        // The parse error never echoes the URL (it may hold a password).
        let url = reqwest::Url::parse(&url)
            .map_err(|e| anyhow::anyhow!("--auth-url is not a valid URL: {e}"))?;
        let shown_url = shown(&url);
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!("--auth-url must be an http:// or https:// URL, not {shown_url}");
        }
        if timeout.is_zero() {
            anyhow::bail!("--auth-timeout must be more than 0");
        }
        let client = reqwest::Client::builder()
            // A redirect would re-send the question elsewhere (and turn the POST into a GET):
            // a 3xx is an error like any other status.
            .redirect(reqwest::redirect::Policy::none())
            // The backend is the app's own: never send credentials through a proxy from the
            // environment.
            .no_proxy()
            .connect_timeout(timeout)
            .user_agent(concat!("concord/", env!("CARGO_PKG_VERSION")))
            .build()?;
        tracing::info!(url = %shown_url, cache = ?cache_ttl, ?timeout, "access is decided by the auth callback");
        Ok(Callback {
            client,
            url,
            shown_url,
            timeout,
            cache: Mutex::new(AnswerCache::new(cache_ttl, MAX_CACHED)),
            in_flight: Mutex::new(HashMap::new()),
            questions: tokio::sync::Semaphore::new(MAX_QUESTIONS),
        })
    }

    /// The callback URL without its userinfo, query and fragment: safe to log.
    pub fn shown_url(&self) -> &str {
        &self.shown_url
    }

    /// Asks about `doc` (`None` for operator endpoints such as `/api/status`).
    pub async fn check(&self, doc: Option<&DocName>, creds: &Credentials) -> Outcome {
        let key = cache::key([
            doc.map(DocName::as_str),
            creds.token.as_deref(),
            creds.cookie.as_deref(),
            creds.authorization.as_deref(),
            creds.origin.as_deref(),
        ]);
        if let Some(answer) = lock(&self.cache).get(&key, Instant::now()) {
            return Ok(answer);
        }
        loop {
            // Either ask, or wait for the identical question already on its way. No lock is held
            // across an await.
            let waiting = {
                let mut in_flight = lock(&self.in_flight);
                match in_flight.get(&key) {
                    Some(tx) => Some(tx.subscribe()),
                    None => {
                        in_flight.insert(key, watch::channel(None).0);
                        None
                    }
                }
            };
            let Some(mut answer) = waiting else {
                let flight = Flight {
                    in_flight: &self.in_flight,
                    key,
                    landed: false,
                };
                let outcome = self.ask(doc, creds).await;
                if let Ok(answer) = &outcome {
                    lock(&self.cache).insert(key, answer.clone(), Instant::now());
                }
                flight.land(&outcome);
                return outcome;
            };
            if let Ok(outcome) = answer.wait_for(Option::is_some).await {
                return outcome.clone().expect("waited for Some");
            }
            // The asker was cancelled (its client went away): ask again.
        }
    }

    /// One question to the backend, within the timeout.
    async fn ask(&self, doc: Option<&DocName>, creds: &Credentials) -> Outcome {
        let Ok(_place) = self.questions.try_acquire() else {
            return Err(CallbackError::Busy);
        };
        let question = serde_json::json!({
            "doc": doc.map(DocName::as_str),
            "token": creds.token,
            "headers": {
                "cookie": creds.cookie,
                "authorization": creds.authorization,
                "origin": creds.origin,
            },
        });
        tokio::time::timeout(self.timeout, self.exchange(&question))
            .await
            .unwrap_or(Err(CallbackError::Timeout(self.timeout)))
    }

    async fn exchange(&self, question: &serde_json::Value) -> Outcome {
        let mut response = self
            .client
            .post(self.url.clone())
            .json(question)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            return Err(CallbackError::Status(status.as_u16()));
        }
        // Verify before allocating: refuse by the announced length, then read with a cap.
        let announced = response.content_length().unwrap_or(0);
        if announced > MAX_ANSWER_BYTES as u64 {
            return Err(CallbackError::TooLarge);
        }
        let mut body = Vec::with_capacity(announced as usize);
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(e))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(CallbackError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        // An object, strictly: serde would also take `["write"]` for the struct.
        let malformed = |e: serde_json::Error| CallbackError::Malformed(e.to_string());
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&body).map_err(malformed)?;
        let wire: WireAnswer =
            serde_json::from_value(serde_json::Value::Object(object)).map_err(malformed)?;
        Ok(Answer {
            access: wire.access,
            user: wire.user,
            admin: wire.admin,
        })
    }

    /// A reqwest error as a [`CallbackError`], without the URL (it may hold credentials).
    fn transport_error(&self, error: reqwest::Error) -> CallbackError {
        if error.is_timeout() {
            return CallbackError::Timeout(self.timeout);
        }
        let error = error.without_url();
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        CallbackError::Unreachable(text)
    }

    /// How many callers wait for a question already on its way (tests).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        lock(&self.in_flight)
            .values()
            .map(watch::Sender::receiver_count)
            .sum()
    }
}

/// A question on its way: when it lands, its answer goes to everyone waiting for it; when it is
/// dropped first (the asking request was cancelled), its waiters are released to ask again.
struct Flight<'a> {
    in_flight: &'a Mutex<HashMap<Key, watch::Sender<Option<Outcome>>>>,
    key: Key,
    landed: bool,
}

impl Flight<'_> {
    fn land(mut self, outcome: &Outcome) {
        if let Some(tx) = lock(self.in_flight).remove(&self.key) {
            tx.send_replace(Some(outcome.clone()));
        }
        self.landed = true;
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        if !self.landed {
            lock(self.in_flight).remove(&self.key);
        }
    }
}

/// `url` without userinfo, query and fragment.
fn shown(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::body::Body;
    use axum::extract::State;
    use axum::http::{StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use serde_json::{Value, json};
    use tokio::sync::Semaphore;

    use super::*;

    /// What the test backend answers.
    #[derive(Clone)]
    enum Reply {
        /// This JSON, with 200.
        Json(Value),
        /// "write" for token `w`, "read" for `r`, "none" otherwise; `user` is the token.
        ByToken,
        /// This status, with a body that would grant write if it were read.
        Status(u16),
        /// This body, with 200.
        Raw(&'static str),
        /// Never answers.
        Hang,
        /// A valid answer padded past the limit, with its length announced.
        Huge,
        /// The same, streamed without a length.
        HugeStreamed,
        /// Answers write once a permit is added.
        Held(Arc<Semaphore>),
    }

    #[derive(Default)]
    struct Seen {
        count: AtomicUsize,
        bodies: Mutex<Vec<Value>>,
    }

    struct Backend {
        url: String,
        seen: Arc<Seen>,
    }

    impl Backend {
        async fn start(reply: Reply) -> Backend {
            let seen = Arc::new(Seen::default());
            let app = Router::new()
                .route("/auth", post(answer))
                .with_state((reply, seen.clone()));
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

        fn callback(&self, ttl: Duration) -> Callback {
            Callback::new(self.url.clone(), ttl, Duration::from_secs(2)).unwrap()
        }
    }

    async fn answer(
        State((reply, seen)): State<(Reply, Arc<Seen>)>,
        axum::Json(body): axum::Json<Value>,
    ) -> Response {
        lock(&seen.bodies).push(body.clone());
        seen.count.fetch_add(1, Ordering::SeqCst);
        let padded = || {
            let pad = "x".repeat(MAX_ANSWER_BYTES);
            format!(r#"{{"access":"write","user":"{pad}"}}"#)
        };
        match reply {
            Reply::Json(v) => axum::Json(v).into_response(),
            Reply::ByToken => {
                let token = body["token"].as_str().unwrap_or_default().to_string();
                let access = match token.as_str() {
                    "w" => "write",
                    "r" => "read",
                    _ => "none",
                };
                axum::Json(json!({"access": access, "user": token})).into_response()
            }
            Reply::Status(code) => (
                StatusCode::from_u16(code).unwrap(),
                r#"{"access":"write","admin":true}"#,
            )
                .into_response(),
            Reply::Raw(text) => {
                ([(header::CONTENT_TYPE, "application/json")], text).into_response()
            }
            Reply::Hang => std::future::pending().await,
            Reply::Huge => padded().into_response(),
            Reply::HugeStreamed => {
                let text = padded();
                let chunks: Vec<Result<String, std::io::Error>> = text
                    .as_bytes()
                    .chunks(4096)
                    .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
                    .collect();
                Body::from_stream(futures_util::stream::iter(chunks)).into_response()
            }
            Reply::Held(permits) => {
                permits.acquire().await.unwrap().forget();
                axum::Json(json!({"access": "write"})).into_response()
            }
        }
    }

    fn doc(name: &str) -> DocName {
        DocName::parse(name).unwrap()
    }

    fn token(t: &str) -> Credentials {
        Credentials {
            token: Some(t.into()),
            ..Default::default()
        }
    }

    const TTL: Duration = Duration::from_secs(60);

    /// Polls `cond` every few milliseconds for up to 10 s.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn write_and_read_answers_grant_what_they_say() {
        let backend = Backend::start(Reply::ByToken).await;
        let callback = backend.callback(TTL);
        let d = doc("team/board");
        let write = callback.check(Some(&d), &token("w")).await.unwrap();
        assert_eq!(
            write,
            Answer {
                access: Access::Write,
                user: Some("w".into()),
                admin: false
            }
        );
        let read = callback.check(Some(&d), &token("r")).await.unwrap();
        assert_eq!(read.access, Access::Read);
        assert_eq!(read.user.as_deref(), Some("r"));
    }

    #[tokio::test]
    async fn none_denies_and_admin_and_unknown_fields_are_read() {
        let backend = Backend::start(Reply::ByToken).await;
        let callback = backend.callback(TTL);
        let none = callback.check(Some(&doc("a")), &token("x")).await.unwrap();
        assert_eq!(none.access, Access::None);

        let backend = Backend::start(Reply::Json(
            json!({"access": "read", "admin": true, "user": "ann", "team": {"id": 7}}),
        ))
        .await;
        let answer = backend
            .callback(TTL)
            .check(None, &token("t"))
            .await
            .unwrap();
        assert_eq!(
            answer,
            Answer {
                access: Access::Read,
                user: Some("ann".into()),
                admin: true
            }
        );
    }

    #[tokio::test]
    async fn posts_the_document_token_and_headers() {
        let backend = Backend::start(Reply::Json(json!({"access": "write"}))).await;
        let callback = backend.callback(TTL);
        let creds = Credentials {
            token: Some("tok".into()),
            cookie: Some("session=abc; theme=dark".into()),
            authorization: Some("Bearer tok".into()),
            origin: Some("https://app.example".into()),
        };
        callback
            .check(Some(&doc("team/a b")), &creds)
            .await
            .unwrap();
        callback.check(None, &Credentials::default()).await.unwrap();
        let bodies = lock(&backend.seen.bodies).clone();
        assert_eq!(
            bodies,
            vec![
                json!({
                    "doc": "team/a b",
                    "token": "tok",
                    "headers": {"cookie": "session=abc; theme=dark", "authorization": "Bearer tok", "origin": "https://app.example"},
                }),
                json!({
                    "doc": null,
                    "token": null,
                    "headers": {"cookie": null, "authorization": null, "origin": null},
                }),
            ]
        );
    }

    #[tokio::test]
    async fn a_slow_backend_is_an_error() {
        let backend = Backend::start(Reply::Hang).await;
        let timeout = Duration::from_millis(200);
        let callback = Callback::new(backend.url.clone(), TTL, timeout).unwrap();
        let started = Instant::now();
        let outcome = callback.check(Some(&doc("a")), &token("w")).await;
        assert_eq!(outcome, Err(CallbackError::Timeout(timeout)));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(backend.calls(), 1);
    }

    #[tokio::test]
    async fn a_backend_that_is_down_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let callback =
            Callback::new(format!("http://{addr}/auth"), TTL, Duration::from_secs(2)).unwrap();
        let outcome = callback.check(Some(&doc("a")), &token("w")).await;
        assert!(
            matches!(outcome, Err(CallbackError::Unreachable(_))),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn any_status_but_200_is_an_error() {
        for code in [500, 503, 403, 401, 302, 204] {
            let backend = Backend::start(Reply::Status(code)).await;
            let outcome = backend
                .callback(TTL)
                .check(Some(&doc("a")), &token("w"))
                .await;
            assert_eq!(outcome, Err(CallbackError::Status(code)));
        }
    }

    #[tokio::test]
    async fn a_malformed_answer_is_an_error() {
        for text in [
            "not json",
            "",
            r#"{"access": "admin"}"#,
            r#"{"access": "WRITE"}"#,
            r#"{"user": "ann"}"#,
            r#"{"access": "write", "admin": "yes"}"#,
            r#"["write"]"#,
        ] {
            let backend = Backend::start(Reply::Raw(text)).await;
            let outcome = backend
                .callback(TTL)
                .check(Some(&doc("a")), &token("w"))
                .await;
            assert!(
                matches!(outcome, Err(CallbackError::Malformed(_))),
                "{text:?} gave {outcome:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_oversized_answer_is_an_error() {
        for reply in [Reply::Huge, Reply::HugeStreamed] {
            let backend = Backend::start(reply).await;
            let outcome = backend
                .callback(TTL)
                .check(Some(&doc("a")), &token("w"))
                .await;
            assert_eq!(outcome, Err(CallbackError::TooLarge));
        }
    }

    #[tokio::test]
    async fn answers_are_cached_per_document_and_credentials() {
        let backend = Backend::start(Reply::ByToken).await;
        let callback = backend.callback(TTL);
        let (a, b) = (doc("a"), doc("b"));
        assert_eq!(
            callback.check(Some(&a), &token("w")).await.unwrap().access,
            Access::Write
        );
        assert_eq!(
            callback.check(Some(&a), &token("w")).await.unwrap().access,
            Access::Write
        );
        assert_eq!(
            backend.calls(),
            1,
            "the second question reached the backend"
        );
        // "none" is cached too.
        callback.check(Some(&a), &token("nobody")).await.unwrap();
        callback.check(Some(&a), &token("nobody")).await.unwrap();
        assert_eq!(backend.calls(), 2);
        // Another document, token, cookie or authorization is another question.
        callback.check(Some(&b), &token("w")).await.unwrap();
        assert_eq!(backend.calls(), 3);
        assert_eq!(
            callback.check(Some(&a), &token("r")).await.unwrap().access,
            Access::Read
        );
        assert_eq!(backend.calls(), 4);
        let with_cookie = Credentials {
            cookie: Some("s=1".into()),
            ..token("w")
        };
        callback.check(Some(&a), &with_cookie).await.unwrap();
        assert_eq!(backend.calls(), 5);
        let with_auth = Credentials {
            authorization: Some("Basic eDp5".into()),
            ..token("w")
        };
        callback.check(Some(&a), &with_auth).await.unwrap();
        callback.check(None, &token("w")).await.unwrap();
        assert_eq!(backend.calls(), 7);
        // Everything asked so far is still cached.
        for creds in [
            token("w"),
            token("r"),
            token("nobody"),
            with_cookie,
            with_auth,
        ] {
            callback.check(Some(&a), &creds).await.unwrap();
        }
        callback.check(Some(&b), &token("w")).await.unwrap();
        callback.check(None, &token("w")).await.unwrap();
        assert_eq!(backend.calls(), 7);
    }

    #[tokio::test]
    async fn answers_expire_after_the_ttl() {
        let backend = Backend::start(Reply::ByToken).await;
        let ttl = Duration::from_millis(50);
        let callback = backend.callback(ttl);
        callback.check(Some(&doc("a")), &token("w")).await.unwrap();
        assert_eq!(backend.calls(), 1);
        // Waits past the TTL on purpose: the next question must reach the backend again.
        tokio::time::sleep(ttl * 2).await;
        callback.check(Some(&doc("a")), &token("w")).await.unwrap();
        assert_eq!(backend.calls(), 2);
    }

    #[tokio::test]
    async fn a_zero_ttl_asks_every_time() {
        let backend = Backend::start(Reply::ByToken).await;
        let callback = backend.callback(Duration::ZERO);
        for _ in 0..3 {
            callback.check(Some(&doc("a")), &token("w")).await.unwrap();
        }
        assert_eq!(backend.calls(), 3);
    }

    #[tokio::test]
    async fn errors_are_never_cached() {
        let backend = Backend::start(Reply::Status(500)).await;
        let callback = backend.callback(TTL);
        for _ in 0..3 {
            assert!(callback.check(Some(&doc("a")), &token("w")).await.is_err());
        }
        assert_eq!(backend.calls(), 3);
    }

    #[tokio::test]
    async fn identical_questions_at_once_ask_the_backend_once() {
        let permits = Arc::new(Semaphore::new(0));
        let backend = Backend::start(Reply::Held(permits.clone())).await;
        let callback = Arc::new(backend.callback(TTL));
        let askers: Vec<_> = (0..5)
            .map(|_| {
                let callback = callback.clone();
                tokio::spawn(async move { callback.check(Some(&doc("a")), &token("w")).await })
            })
            .collect();
        until("the first question", || backend.calls() == 1).await;
        until("the others to wait for it", || callback.waiting() == 4).await;
        permits.add_permits(1);
        for asker in askers {
            assert_eq!(asker.await.unwrap().unwrap().access, Access::Write);
        }
        assert_eq!(backend.calls(), 1);
    }

    #[tokio::test]
    async fn past_max_questions_a_new_question_is_denied_at_once() {
        let permits = Arc::new(Semaphore::new(0));
        let backend = Backend::start(Reply::Held(permits.clone())).await;
        let callback = Arc::new(backend.callback(TTL));
        let askers: Vec<_> = (0..MAX_QUESTIONS)
            .map(|i| {
                let callback = callback.clone();
                tokio::spawn(async move {
                    callback
                        .check(Some(&doc("a")), &token(&format!("t{i}")))
                        .await
                })
            })
            .collect();
        until("every place taken", || {
            callback.questions.available_permits() == 0
        })
        .await;
        assert!(matches!(
            callback.check(Some(&doc("a")), &token("one-more")).await,
            Err(CallbackError::Busy)
        ));
        permits.add_permits(MAX_QUESTIONS);
        for asker in askers {
            assert_eq!(asker.await.unwrap().unwrap().access, Access::Write);
        }
        // Places are given back: the next question is asked.
        permits.add_permits(1);
        assert!(
            callback
                .check(Some(&doc("a")), &token("later"))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn waiters_ask_again_when_the_asker_is_cancelled() {
        let permits = Arc::new(Semaphore::new(0));
        let backend = Backend::start(Reply::Held(permits.clone())).await;
        let callback = Arc::new(backend.callback(TTL));
        let ask = || {
            let callback = callback.clone();
            tokio::spawn(async move { callback.check(Some(&doc("a")), &token("w")).await })
        };
        let first = ask();
        until("the first question", || backend.calls() == 1).await;
        let second = ask();
        until("the second to wait", || callback.waiting() == 1).await;
        first.abort();
        until("the second to ask itself", || backend.calls() == 2).await;
        permits.add_permits(2);
        assert_eq!(second.await.unwrap().unwrap().access, Access::Write);
    }

    #[tokio::test]
    async fn the_url_credentials_never_show() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let url = format!("http://concord:s3cret@{addr}/auth?key=hunter2#frag");
        let callback = Callback::new(url, TTL, Duration::from_secs(2)).unwrap();
        assert_eq!(callback.shown_url(), format!("http://{addr}/auth"));
        let error = callback
            .check(Some(&doc("a")), &token("w"))
            .await
            .unwrap_err()
            .to_string();
        for secret in ["s3cret", "hunter2", "concord:"] {
            assert!(!error.contains(secret), "{error:?} shows {secret:?}");
        }
        let bad = Callback::new("ftp://u:s3cret@host/x".into(), TTL, Duration::from_secs(1));
        let message = bad.err().unwrap().to_string();
        assert!(!message.contains("s3cret"), "{message}");
        assert!(Callback::new("http://[::1".into(), TTL, Duration::from_secs(1)).is_err());
    }
}
