//! Document names: what a room may be called.
//!
//! A name is the rest of the URL path after `/ws/`, so it may contain `/` (`team/notes`).
//! The rules are deliberately small so every client library can produce them: non-empty, at most
//! [`MAX_DOC_NAME_BYTES`] bytes of UTF-8, and no control characters (they would corrupt logs and
//! could smuggle line breaks into anything that prints the name).

use std::fmt;
use std::sync::Arc;

/// Longest accepted document name, in bytes of UTF-8.
pub const MAX_DOC_NAME_BYTES: usize = 512;

/// Why a document name was refused. Shown to the client in the 400 response body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("document name is empty")]
    Empty,
    #[error("document name is {len} bytes; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("document name contains a control character at byte {at}")]
    ControlCharacter { at: usize },
}

/// A validated document name. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocName(Arc<str>);

impl DocName {
    /// Validates `name` against the default limit.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        Self::parse_with_limit(name, MAX_DOC_NAME_BYTES)
    }

    /// Validates `name` with a configured maximum length (never above what the caller allows).
    pub fn parse_with_limit(name: &str, max_bytes: usize) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > max_bytes {
            return Err(NameError::TooLong {
                len: name.len(),
                max: max_bytes,
            });
        }
        if let Some((at, _)) = name.char_indices().find(|(_, c)| c.is_control()) {
            return Err(NameError::ControlCharacter { at });
        }
        Ok(DocName(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DocName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DocName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for DocName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_slashes_and_unicode() {
        assert_eq!(DocName::parse("team/notes").unwrap().as_str(), "team/notes");
        assert!(DocName::parse("équipe/日本語").is_ok());
    }

    #[test]
    fn refuses_empty_long_and_control() {
        assert_eq!(DocName::parse(""), Err(NameError::Empty));
        let long = "a".repeat(MAX_DOC_NAME_BYTES + 1);
        assert!(matches!(
            DocName::parse(&long),
            Err(NameError::TooLong { .. })
        ));
        assert!(DocName::parse(&"a".repeat(MAX_DOC_NAME_BYTES)).is_ok());
        assert_eq!(
            DocName::parse("a\nb"),
            Err(NameError::ControlCharacter { at: 1 })
        );
        assert!(DocName::parse("a\u{7f}").is_err());
    }

    #[test]
    fn limit_counts_bytes_not_chars() {
        // 3 bytes per char: 171 chars = 513 bytes.
        let name = "日".repeat(171);
        assert!(matches!(
            DocName::parse(&name),
            Err(NameError::TooLong { len: 513, .. })
        ));
    }
}
