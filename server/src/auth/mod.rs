//! Access control: who may read and write which document, and who may use the operator
//! endpoints. One [`Gate`] per server decides every request before any work is done for it
//! (before the WebSocket upgrade, before a document is loaded), from a JWT ([`token`]) or the
//! app's backend ([`callback`]); what a token's patterns grant is pure logic ([`access`]).
//!
//! With no key and no callback configured the gate is open (every request gets write access),
//! which `serve` only allows on a loopback address or with `--allow-anonymous`.

pub mod access;
pub mod args;
pub mod callback;
pub mod token;

use std::time::SystemTime;

use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use concord_crdt::DocName;

pub use access::Access;
use callback::Callback;
use token::Verifier;

pub use args::AuthArgs;

/// What a request may do, once the gate let it through.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Access to the document asked about ([`Access::Write`] for operator endpoints).
    pub access: Access,
    pub admin: bool,
    /// Who it is (`sub`, or the callback's `user`), for logs.
    pub sub: Option<String>,
    /// When the token expires: a connection is closed with 1008 then.
    pub expires: Option<SystemTime>,
}

/// The credentials a request carries. Never logged.
#[derive(Clone, Default)]
pub struct Credentials {
    /// `?token=`, or else the bearer token of `Authorization`.
    pub token: Option<String>,
    pub cookie: Option<String>,
    pub authorization: Option<String>,
    /// The `Origin` header: which site's page opened the connection. An auth callback that
    /// decides by cookie must check it (cross-site WebSocket hijacking).
    pub origin: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("cookie", &self.cookie.as_ref().map(|_| "[redacted]"))
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

impl Credentials {
    /// Reads the credentials of a request: `query_token` (from `?token=`) wins over the bearer
    /// token of the `Authorization` header.
    pub fn from_request(headers: &HeaderMap, query_token: Option<String>) -> Self {
        let text = |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let authorization = text(header::AUTHORIZATION);
        let bearer = authorization.as_deref().and_then(|a| {
            let (scheme, rest) = a.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim().to_string())
        });
        Credentials {
            token: query_token.filter(|t| !t.is_empty()).or(bearer),
            cookie: text(header::COOKIE),
            authorization,
            origin: text(header::ORIGIN),
        }
    }

    pub fn from_parts(parts: &Parts, query_token: Option<String>) -> Self {
        Self::from_request(&parts.headers, query_token)
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A WebSocket connection to a document: read at least.
    Connect,
    /// An HTTP read of a document.
    Read,
    /// An operator endpoint (`/api/status`, and later metrics, deletes, backups).
    Admin,
}

/// Why a request was refused: its status code and a short reason (sent and logged; never the
/// token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    /// What kind of refusal, from a fixed set (`missing_token`, `invalid_token`,
    /// `expired_token`, `forbidden`, `backend_error`): the label it is counted under in the
    /// metrics, where the free-form `reason` would not be bounded.
    pub kind: &'static str,
    pub reason: String,
    /// Who asked, when the credentials said (for the log).
    pub sub: Option<String>,
    /// What only the log gets (an auth backend's transport error, say): never sent.
    pub detail: Option<String>,
}

impl Refusal {
    fn unauthenticated(kind: &'static str, reason: impl Into<String>) -> Self {
        Refusal {
            status: StatusCode::UNAUTHORIZED,
            kind,
            reason: reason.into(),
            sub: None,
            detail: None,
        }
    }

    fn forbidden(reason: impl Into<String>, sub: Option<String>) -> Self {
        Refusal {
            status: StatusCode::FORBIDDEN,
            kind: "forbidden",
            reason: reason.into(),
            sub,
            detail: None,
        }
    }
}

enum Mode {
    Open,
    Tokens(Verifier),
    Callback(Box<Callback>),
}

/// Decides every request.
pub struct Gate {
    mode: Mode,
}

impl Gate {
    /// Builds the gate from the flags; fails on unreadable keys or conflicting settings.
    pub fn new(args: &AuthArgs) -> anyhow::Result<Self> {
        let tokens = args.auth_secret.is_some() || !args.auth_public_key.is_empty();
        let mode = match (&args.auth_url, tokens) {
            (Some(_), true) => anyhow::bail!(
                "--auth-url and --auth-secret/--auth-public-key are alternatives: pick one"
            ),
            (Some(url), false) => Mode::Callback(Box::new(Callback::new(
                url.clone(),
                args.auth_cache,
                args.auth_timeout,
            )?)),
            (None, true) => Mode::Tokens(Verifier::new(
                args.auth_secret.as_deref(),
                &args.auth_public_key,
            )?),
            (None, false) => Mode::Open,
        };
        Ok(Gate { mode })
    }

    /// A gate that lets everything through (tests and embedders).
    pub fn open() -> Self {
        Gate { mode: Mode::Open }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.mode, Mode::Open)
    }

    /// Decides whether `creds` may do `need` on `doc` (`None` for operator endpoints).
    pub async fn check(
        &self,
        need: Need,
        doc: Option<&DocName>,
        creds: &Credentials,
    ) -> Result<Grant, Refusal> {
        let grant = match &self.mode {
            Mode::Open => {
                return Ok(Grant {
                    access: Access::Write,
                    admin: true,
                    sub: None,
                    expires: None,
                });
            }
            Mode::Tokens(verifier) => {
                let Some(token) = creds.token.as_deref() else {
                    return Err(Refusal::unauthenticated(
                        "missing_token",
                        "a token is required (?token= or Authorization: Bearer)",
                    ));
                };
                let claims = verifier.verify(token).map_err(|e| {
                    let kind = match e {
                        token::TokenError::Expired => "expired_token",
                        _ => "invalid_token",
                    };
                    Refusal::unauthenticated(kind, e.to_string())
                })?;
                Grant {
                    access: doc.map_or(Access::None, |d| {
                        access::access_for(&claims.docs, d.as_str())
                    }),
                    admin: claims.admin,
                    expires: claims.expires_at(),
                    sub: claims.sub,
                }
            }
            Mode::Callback(callback) => {
                let answer = callback.check(doc, creds).await.map_err(|e| Refusal {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    kind: "backend_error",
                    reason: "access denied: the authorization backend did not answer; retry".into(),
                    sub: None,
                    detail: Some(e.to_string()),
                })?;
                Grant {
                    access: answer.access,
                    admin: answer.admin,
                    sub: answer.user,
                    expires: None,
                }
            }
        };
        match need {
            Need::Admin if !grant.admin => Err(Refusal::forbidden(
                "this endpoint needs an admin token",
                grant.sub,
            )),
            Need::Connect | Need::Read if grant.access == Access::None => Err(Refusal::forbidden(
                "the token does not grant access to this document",
                grant.sub,
            )),
            _ => Ok(grant),
        }
    }
}
