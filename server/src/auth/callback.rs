//! `--auth-url`: asks the app's backend who may do what, for apps whose permissions change too
//! often for tokens. (Skeleton: denies everything until implemented.)

use std::time::Duration;

use concord_crdt::DocName;

use super::Credentials;
use super::access::Access;

/// The backend's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub access: Access,
    pub user: Option<String>,
    pub admin: bool,
}

/// Why there is no answer: access is denied in every case (fail closed).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallbackError {
    #[error("auth backend did not answer within {0:?}")]
    Timeout(Duration),
    #[error("auth backend unreachable: {0}")]
    Unreachable(String),
    #[error("auth backend answered HTTP {0}")]
    Status(u16),
    #[error("auth backend answer is malformed: {0}")]
    Malformed(String),
}

pub struct Callback {
    #[allow(dead_code)]
    url: String,
    #[allow(dead_code)]
    cache_ttl: Duration,
    timeout: Duration,
}

impl Callback {
    pub fn new(url: String, cache_ttl: Duration, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Callback {
            url,
            cache_ttl,
            timeout,
        })
    }

    /// Asks about `doc` (`None` for operator endpoints such as `/api/status`).
    pub async fn check(
        &self,
        _doc: Option<&DocName>,
        _creds: &Credentials,
    ) -> Result<Answer, CallbackError> {
        Err(CallbackError::Timeout(self.timeout))
    }
}
