//! Client tokens: JWTs verified by `jsonwebtoken` (no hand-written crypto), and minted by
//! `concord token` for scripts and tests.
//!
//! Every key has exactly one algorithm (the secret HS256; a PEM key the one its type implies),
//! and a token is only checked against keys of the algorithm its header names. So `alg: none`
//! (which `jsonwebtoken` cannot even parse) and algorithm confusion (an HS256 token "signed" with
//! the bytes of a public key) both fail: there is no HS256 key made of public-key bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::access::Access;

/// Longest token accepted, in bytes: checked before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The claims Concord reads. Unknown claims are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Expiry, in seconds since the Unix epoch. Required.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Pattern → access (see [`super::access`]).
    #[serde(default)]
    pub docs: BTreeMap<String, Access>,
    /// Grants the operator endpoints.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

impl Claims {
    /// When the token expires; `None` when `exp` is too far out to be a time (such a token is
    /// refused).
    pub fn expires_at(&self) -> Option<SystemTime> {
        UNIX_EPOCH.checked_add(Duration::from_secs(self.exp))
    }
}

/// Longest `kid` quoted back in a refusal: the header is unverified input.
const MAX_KID_SHOWN: usize = 64;

/// Why a token was refused. The text is sent to the client and logged; it never holds the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token algorithm {0} is not accepted here")]
    Algorithm(String),
    #[error("token names key id {0:?}, which this server does not have")]
    UnknownKey(String),
    #[error("token signature is invalid")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token claims are invalid: {0}")]
    Claims(String),
}

/// Why the configured keys could not be loaded (a startup error).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read public key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a PEM public key Concord can use (EC P-256 for ES256, Ed25519 for EdDSA, \
         or RSA for RS256)"
    )]
    Unsupported { path: PathBuf },
    #[error("--auth-secret is empty")]
    EmptySecret,
}

struct Key {
    /// The file stem of a public key; `None` for the shared secret.
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Checks tokens against the configured secret and public keys.
pub struct Verifier {
    keys: Vec<Key>,
}

impl Verifier {
    pub fn new(secret: Option<&str>, public_keys: &[PathBuf]) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        if let Some(secret) = secret {
            if secret.is_empty() {
                return Err(KeyError::EmptySecret);
            }
            keys.push(Key {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        for path in public_keys {
            keys.push(load_public_key(path)?);
        }
        Ok(Verifier { keys })
    }

    /// Verifies `token` and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| k.alg == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(match &header.kid {
                Some(kid) if self.keys.iter().any(|k| k.alg == header.alg) => {
                    TokenError::UnknownKey(kid.chars().take(MAX_KID_SHOWN).collect())
                }
                _ => TokenError::Algorithm(format!("{:?}", header.alg)),
            });
        }
        let mut last = TokenError::Signature;
        for key in candidates {
            let mut validation = Validation::new(key.alg);
            validation.leeway = 0;
            validation.validate_nbf = true;
            validation.validate_aud = false;
            validation.set_required_spec_claims(&["exp"]);
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                // RFC 7519: `exp` is the time "on or after which" the token is refused;
                // jsonwebtoken still accepts it during that second, while a connection is
                // closed at its start.
                Ok(data) if now_secs() >= data.claims.exp => return Err(TokenError::Expired),
                Ok(data) if data.claims.expires_at().is_none() => {
                    return Err(TokenError::Claims("exp is out of range".into()));
                }
                Ok(data) => return Ok(data.claims),
                Err(e) => last = classify(e),
            }
        }
        Err(last)
    }
}

fn classify(e: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => TokenError::Expired,
        K::ImmatureSignature => TokenError::NotYetValid,
        K::InvalidSignature => TokenError::Signature,
        K::InvalidAlgorithm => TokenError::Algorithm("mismatch".into()),
        K::MissingRequiredClaim(c) => TokenError::Claims(format!("missing {c}")),
        K::Json(e) => TokenError::Claims(e.to_string()),
        _ => TokenError::Malformed,
    }
}

type PemParser = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;

fn load_public_key(path: &Path) -> Result<Key, KeyError> {
    let pem = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let kid = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    let text = String::from_utf8_lossy(&pem);
    // The PEM label tells RSA apart; SPKI ("PUBLIC KEY") keys are tried as EC, then Ed25519,
    // and each parser refuses the other's keys.
    let attempts: [(Algorithm, PemParser); 3] = [
        (Algorithm::ES256, DecodingKey::from_ec_pem),
        (Algorithm::EdDSA, DecodingKey::from_ed_pem),
        (Algorithm::RS256, DecodingKey::from_rsa_pem),
    ];
    let rsa_label = text.contains("RSA PUBLIC KEY");
    for (alg, parse) in attempts {
        if rsa_label && alg != Algorithm::RS256 {
            continue;
        }
        if let Ok(key) = parse(&pem)
            && key_fits(alg, &key)
        {
            return Ok(Key { kid, alg, key });
        }
    }
    Err(KeyError::Unsupported {
        path: path.to_path_buf(),
    })
}

/// `jsonwebtoken`'s PEM parsers check the PEM structure, not always the key type: make sure
/// the key's family is the algorithm's, so a key is never used under the wrong algorithm.
fn key_fits(alg: Algorithm, key: &DecodingKey) -> bool {
    use jsonwebtoken::AlgorithmFamily as F;
    let family = key.family();
    match alg {
        Algorithm::ES256 => family == F::Ec && key.as_bytes().len() == 65,
        Algorithm::EdDSA => family == F::Ed && key.as_bytes().len() == 32,
        Algorithm::RS256 => family == F::Rsa,
        _ => false,
    }
}

/// Mints an HS256 token with `secret` (for `concord token`, scripts and tests).
pub fn mint(secret: &str, claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing of serializable claims cannot fail")
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn claims() -> impl Strategy<Value = Claims> {
        let access = prop_oneof![Just(Access::None), Just(Access::Read), Just(Access::Write)];
        (
            proptest::collection::btree_map("[a-z/]{0,6}\\*?", access, 0..4),
            any::<bool>(),
            proptest::option::of("[a-z]{1,8}"),
        )
            .prop_map(|(docs, admin, sub)| Claims {
                exp: now_secs() + 3600,
                nbf: None,
                sub,
                docs,
                admin,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 512,
            rng_seed: proptest::test_runner::RngSeed::Fixed(13),
            ..ProptestConfig::default()
        })]

        /// A token verifies to exactly the claims it was minted with, and any change to any
        /// byte of it either is refused or (a base64 bit the decoder ignores) changes nothing:
        /// a tampered token never grants more.
        #[test]
        fn tampered_tokens_never_grant_more(
            claims in claims(),
            at in any::<proptest::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let verifier = Verifier::new(Some("secret"), &[]).unwrap();
            let token = mint("secret", &claims);
            prop_assert_eq!(verifier.verify(&token), Ok(claims.clone()));
            let mut bytes = token.into_bytes();
            let i = at.index(bytes.len());
            bytes[i] ^= flip;
            if let Ok(tampered) = String::from_utf8(bytes)
                && let Ok(got) = verifier.verify(&tampered)
            {
                prop_assert_eq!(got, claims.clone());
            }
            // Minted with another secret: always refused.
            let other = mint("other", &claims);
            prop_assert_eq!(verifier.verify(&other), Err(TokenError::Signature));
        }
    }

    #[test]
    fn an_exp_too_far_out_is_refused_not_a_panic() {
        let verifier = Verifier::new(Some("secret"), &[]).unwrap();
        let claims = Claims {
            exp: u64::MAX,
            nbf: None,
            sub: None,
            docs: BTreeMap::new(),
            admin: false,
        };
        assert_eq!(
            verifier.verify(&mint("secret", &claims)),
            Err(TokenError::Claims("exp is out of range".into()))
        );
    }

    #[test]
    fn oversized_tokens_are_refused_before_decoding() {
        let verifier = Verifier::new(Some("secret"), &[]).unwrap();
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(verifier.verify(&huge), Err(TokenError::TooLong));
    }
}
