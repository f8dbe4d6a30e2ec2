//! `concord status`: reads a node's `GET /api/status` over HTTP(S) and prints it with
//! [`crate::status_table`], once or every second (`--watch`). Its exit status is for scripts and
//! monitors: 0 when every peer is linked, 1 when one is down, 2 when the status could not be read
//! (unreachable, refused, not a Concord status).
//!
//! With auth on, `/api/status` needs an admin token: `--token`, `CONCORD_TOKEN` or
//! `--token-file`, sent as `Authorization: Bearer` (never in the URL, never printed). The answer is
//! read up to a bound, within `--timeout`.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use crate::status_cli::StatusArgs;
use crate::status_table::{self, NodeStatus};

/// Exit status when the status could not be read.
pub const UNREADABLE: i32 = 2;

/// Most bytes of an answer read: a status is a few KB per peer.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// How often `--watch` redraws.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Why the status could not be read: the message printed, with exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0:?} is not an http:// or https:// URL")]
    BadUrl(String),
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "{url} answered {status}: a token with admin is needed (--token or CONCORD_TOKEN){}",
        given_note(*given)
    )]
    NeedsAdmin {
        url: String,
        status: u16,
        given: bool,
    },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url} did not answer with a Concord status: {reason}")]
    NotAStatus { url: String, reason: String },
}

fn given_note(given: bool) -> &'static str {
    if given {
        "; the token given was refused or has no admin"
    } else {
        ""
    }
}

/// Runs the command; returns the process's exit status.
pub async fn run(args: StatusArgs) -> i32 {
    let client = match client(args.timeout) {
        Ok(client) => client,
        Err(e) => return fail(&e),
    };
    let url = match status_url(&args.url) {
        Ok(url) => url,
        Err(e) => return fail(&e),
    };
    let from_file = match &args.token_file {
        Some(path) => match crate::config_file::secret_files::read("token-file", path) {
            Ok(token) => Some(token),
            Err(e) => {
                eprintln!("concord status: {e}");
                return UNREADABLE;
            }
        },
        None => None,
    };
    let token = from_file
        .as_deref()
        .or(args.token.as_deref())
        .filter(|t| !t.is_empty());
    if !args.watch {
        return match fetch(&client, &url, token).await {
            Ok(status) => {
                print!("{}", status_table::render(&status));
                status_table::exit_code(&status)
            }
            Err(e) => fail(&e),
        };
    }
    let terminal = std::io::stdout().is_terminal();
    let mut code = UNREADABLE;
    let mut ticks = tokio::time::interval(WATCH_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    let mut first = true;
    loop {
        tokio::select! {
            _ = &mut stop => return code,
            _ = ticks.tick() => {}
        }
        let (text, now) = match fetch(&client, &url, token).await {
            Ok(status) => (
                status_table::render(&status),
                status_table::exit_code(&status),
            ),
            Err(e) => (format!("{e}\n"), UNREADABLE),
        };
        code = now;
        let mut out = std::io::stdout().lock();
        // A terminal is redrawn in place; a pipe or file gets one snapshot after another.
        let lead = match (terminal, first) {
            (true, _) => "\x1b[H\x1b[2J",
            (false, true) => "",
            (false, false) => "\n",
        };
        let _ = write!(out, "{lead}{text}");
        let _ = out.flush();
        first = false;
    }
}

fn fail(e: &FetchError) -> i32 {
    eprintln!("concord status: {e}");
    UNREADABLE
}

/// `URL/api/status` (a trailing `/` on the URL is fine).
fn status_url(base: &str) -> Result<reqwest::Url, FetchError> {
    let url = reqwest::Url::parse(&format!("{}/api/status", base.trim_end_matches('/')))
        .map_err(|_| FetchError::BadUrl(base.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::BadUrl(base.to_string()));
    }
    Ok(url)
}

/// A client with a total timeout, no redirects (the token must not follow one elsewhere), no
/// proxy from the environment, and the system's root certificates for https.
fn client(timeout: Duration) -> Result<reqwest::Client, FetchError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Client(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .user_agent(concat!("concord-status/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| FetchError::Client(e.to_string()))
}

/// One read of the status.
async fn fetch(
    client: &reqwest::Client,
    url: &reqwest::Url,
    token: Option<&str>,
) -> Result<NodeStatus, FetchError> {
    let shown = url.to_string();
    let mut request = client.get(url.clone());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let unreachable = |e: reqwest::Error| FetchError::Unreachable {
        url: shown.clone(),
        reason: error_chain(&e),
    };
    let mut response = request.send().await.map_err(unreachable)?;
    let status = response.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(FetchError::NotAStatus {
                url: shown,
                reason: format!("the answer is larger than {MAX_BODY} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    match status {
        200 => serde_json::from_slice(&body).map_err(|e| FetchError::NotAStatus {
            url: shown,
            reason: e.to_string(),
        }),
        401 | 403 => Err(FetchError::NeedsAdmin {
            url: shown,
            status,
            given: token.is_some(),
        }),
        _ => Err(FetchError::Status {
            url: shown,
            status,
            body: String::from_utf8_lossy(&body[..body.len().min(200)])
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect::<String>()
                .trim()
                .to_string(),
        }),
    }
}

/// The error and its causes on one line (reqwest's own text is only the outermost).
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_url_is_under_the_base() {
        for base in ["http://127.0.0.1:8080", "http://127.0.0.1:8080/"] {
            assert_eq!(
                status_url(base).unwrap().as_str(),
                "http://127.0.0.1:8080/api/status"
            );
        }
        assert_eq!(
            status_url("https://eu.example.com/concord")
                .unwrap()
                .as_str(),
            "https://eu.example.com/concord/api/status"
        );
        assert!(matches!(status_url("ftp://x"), Err(FetchError::BadUrl(_))));
        assert!(matches!(
            status_url("not a url"),
            Err(FetchError::BadUrl(_))
        ));
    }

    #[test]
    fn a_refusal_asks_for_an_admin_token() {
        let e = FetchError::NeedsAdmin {
            url: "http://n/api/status".into(),
            status: 401,
            given: false,
        };
        assert_eq!(
            e.to_string(),
            "http://n/api/status answered 401: a token with admin is needed (--token or CONCORD_TOKEN)"
        );
    }
}
