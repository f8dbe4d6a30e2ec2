//! Tokens for servers with access control: minted per simulated editor from `--auth-secret`
//! (HS256, the format `concord token` mints), or one fixed `--token`, and carried as `?token=`
//! on the WebSocket URL the way y-websocket's `params: { token }` carries it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

/// How long minted tokens are valid: longer than any run.
const VALID_FOR: Duration = Duration::from_secs(3600);

/// Where the run's tokens come from.
#[derive(Clone)]
pub enum Tokens {
    /// No access control.
    None,
    /// The same token for every connection.
    Fixed(String),
    /// A token per simulated editor, signed with this secret.
    Mint(EncodingKey),
}

impl Tokens {
    pub fn new(token: Option<&str>, secret: Option<&str>) -> Tokens {
        match (token, secret) {
            (Some(t), _) => Tokens::Fixed(t.to_string()),
            (None, Some(s)) => Tokens::Mint(EncodingKey::from_secret(s.as_bytes())),
            (None, None) => Tokens::None,
        }
    }

    /// The token of editor `id`: write access to every document.
    pub fn editor(&self, id: usize) -> Option<String> {
        self.token(json!({ "docs": { "*": "write" }, "sub": format!("loadtest-{id}") }))
    }

    /// A token for the operator endpoints (`/api/status`) and the read API, which this tool
    /// uses to wait for the mesh and to compare the regions' copies.
    pub fn operator(&self) -> Option<String> {
        self.token(json!({ "docs": { "*": "read" }, "sub": "loadtest", "admin": true }))
    }

    fn token(&self, mut claims: serde_json::Value) -> Option<String> {
        match self {
            Tokens::None => None,
            Tokens::Fixed(t) => Some(t.clone()),
            Tokens::Mint(key) => {
                let exp = (SystemTime::now() + VALID_FOR)
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                claims["exp"] = exp.into();
                Some(
                    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
                        .expect("HS256 signing cannot fail"),
                )
            }
        }
    }
}

/// `url` with `?token=` (or `&token=`) appended, percent-encoded, when there is a token.
pub fn with_token(url: &str, token: Option<&str>) -> String {
    let Some(token) = token else {
        return url.to_string();
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut out = format!("{url}{sep}token=");
    for b in token.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The command line with secrets and tokens blanked, for reports.
pub fn redacted(args: impl IntoIterator<Item = String>) -> Vec<String> {
    const SECRET: [&str; 3] = ["--auth-secret", "--token", "--peer-secret"];
    let mut out: Vec<String> = Vec::new();
    for a in args {
        let after_flag = out
            .last()
            .is_some_and(|prev| SECRET.contains(&prev.as_str()));
        let inline = SECRET
            .iter()
            .chain(&["--server-arg=--auth-secret", "--server-arg=--peer-secret"])
            .find(|f| a.starts_with(&format!("{f}=")));
        out.push(match inline {
            _ if after_flag => "<redacted>".into(),
            Some(flag) => format!("{flag}=<redacted>"),
            None => a,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_with_the_secret_and_carry_the_claims() {
        let t = Tokens::new(None, Some("s3cret")).editor(7).unwrap();
        let mut v = jsonwebtoken::Validation::new(Algorithm::HS256);
        v.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
            &v,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "loadtest-7");
        assert_eq!(data.claims["docs"]["*"], "write");
        let op = Tokens::new(None, Some("s3cret")).operator().unwrap();
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(
                &op,
                &jsonwebtoken::DecodingKey::from_secret(b"other"),
                &v
            )
            .is_err()
        );
    }

    #[test]
    fn tokens_go_in_the_query_string_encoded() {
        assert_eq!(with_token("ws://h/ws/d", None), "ws://h/ws/d");
        assert_eq!(
            with_token("ws://h/ws/d", Some("a.b_c")),
            "ws://h/ws/d?token=a.b_c"
        );
        assert_eq!(
            with_token("ws://h/ws/d?x=1", Some("a b&")),
            "ws://h/ws/d?x=1&token=a%20b%26"
        );
        assert_eq!(
            Tokens::new(Some("fixed"), Some("s")).editor(1).unwrap(),
            "fixed"
        );
        assert!(Tokens::new(None, None).editor(1).is_none());
    }

    #[test]
    fn reports_never_show_secrets() {
        let args = [
            "--auth-secret",
            "s1",
            "--token=t1",
            "--server-arg=--peer-secret=s2",
            "--docs",
            "3",
        ];
        let shown = redacted(args.iter().map(|s| s.to_string())).join(" ");
        assert_eq!(
            shown,
            "--auth-secret <redacted> --token=<redacted> --server-arg=--peer-secret=<redacted> --docs 3"
        );
    }
}
