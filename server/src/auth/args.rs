//! The command-line flags of access control (`--auth-*`, `--allow-anonymous`), next to the code
//! that enforces them; `config` flattens them into `concord serve`'s flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Who may read and write which document (see docs/access-control.md).
#[derive(Debug, Clone, Default, Args)]
pub struct AuthArgs {
    /// Verify client tokens (JWT, HS256) with this shared secret. The app's backend signs tokens
    /// with it; `concord token` mints them from it.
    #[arg(long, env = "CONCORD_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,

    /// Read --auth-secret from this file instead, so it stays out of `ps` and shell history (one
    /// trailing newline is ignored).
    #[arg(long, env = "CONCORD_AUTH_SECRET_FILE", conflicts_with = "auth_secret")]
    pub auth_secret_file: Option<PathBuf>,

    /// Verify client tokens with this public key (PEM: ES256, EdDSA or RS256). Repeatable, for
    /// key rotation: a token's `kid` picks the key named by the file's stem (`keys/2026-12.pem`
    /// is kid `2026-12`); a token without `kid` is tried against each.
    #[arg(long, env = "CONCORD_AUTH_PUBLIC_KEY")]
    pub auth_public_key: Vec<PathBuf>,

    /// Ask the app's backend instead: POST {doc, token, headers} to this URL for each new
    /// connection or HTTP call; it answers {"access": "write"|"read"|"none", "user": "..."}.
    #[arg(long, env = "CONCORD_AUTH_URL")]
    pub auth_url: Option<String>,

    /// How long an --auth-url answer is reused for the same token and document.
    #[arg(long, env = "CONCORD_AUTH_CACHE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub auth_cache: Duration,

    /// How long --auth-url may take to answer; a slower answer denies access.
    #[arg(long, env = "CONCORD_AUTH_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub auth_timeout: Duration,

    /// Serve without any authentication on a non-loopback address. Every start logs a warning.
    #[arg(long, env = "CONCORD_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
}

impl AuthArgs {
    /// Whether any way of checking clients is configured.
    pub fn enabled(&self) -> bool {
        self.auth_secret.is_some() || !self.auth_public_key.is_empty() || self.auth_url.is_some()
    }
}
