//! Secrets read from files (`--auth-secret-file`, `--peer-secret-file`), so they stay out of
//! `ps`, `/proc/PID/environ` and shell history: mounted container secrets, files only the
//! service user can read. A file's content is the secret, less one trailing newline (what
//! `echo` and editors add). An unreadable, empty or oversized file stops the start with an
//! error naming the flag and the path; the content is never part of a message.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::config::ServeArgs;

/// Larger than any secret: a bigger file is a mistake (`/dev/zero`, a log file), not read whole.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("--{flag} {}: cannot read it: {source}", path.display())]
    Unreadable {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--{flag} {}: {problem}", path.display())]
    Invalid {
        flag: &'static str,
        path: PathBuf,
        problem: Problem,
    },
}

/// What is wrong with a secret file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("the file is empty")]
    Empty,
    #[error("the file is larger than {MAX_SECRET_BYTES} bytes: not a secret")]
    TooLarge,
    #[error("the file is not UTF-8 text")]
    NotText,
}

/// The secret in a file's content: the text, less one trailing newline (`\n` or `\r\n`).
pub fn secret_from(bytes: Vec<u8>) -> Result<String, Problem> {
    if bytes.len() > MAX_SECRET_BYTES {
        return Err(Problem::TooLarge);
    }
    let mut text = String::from_utf8(bytes).map_err(|_| Problem::NotText)?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(Problem::Empty);
    }
    Ok(text)
}

/// Reads the secret in `path`, given by the flag `--flag`.
pub fn read(flag: &'static str, path: &Path) -> Result<String, SecretFileError> {
    let unreadable = |source| SecretFileError::Unreadable {
        flag,
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SECRET_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(unreadable)?;
    secret_from(bytes).map_err(|problem| SecretFileError::Invalid {
        flag,
        path: path.to_path_buf(),
        problem,
    })
}

/// Fills `--auth-secret` and `--peer-secret` from their files, when given (clap keeps a flag and
/// its file from being given together).
pub fn resolve(args: &mut ServeArgs) -> Result<(), SecretFileError> {
    if let Some(path) = &args.auth.auth_secret_file {
        args.auth.auth_secret = Some(read("auth-secret-file", path)?);
    }
    if let Some(path) = &args.peer_secret_file {
        args.peer_secret = Some(read("peer-secret-file", path)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_newline_is_dropped_and_nothing_else() {
        assert_eq!(secret_from(b"s3cret\n".to_vec()).unwrap(), "s3cret");
        assert_eq!(secret_from(b"s3cret\r\n".to_vec()).unwrap(), "s3cret");
        assert_eq!(secret_from(b"s3cret".to_vec()).unwrap(), "s3cret");
        assert_eq!(secret_from(b"s3cret\n\n".to_vec()).unwrap(), "s3cret\n");
        assert_eq!(secret_from(b" s3 \n".to_vec()).unwrap(), " s3 ");
    }

    #[test]
    fn empty_oversized_or_binary_files_are_refused() {
        assert_eq!(secret_from(Vec::new()), Err(Problem::Empty));
        assert_eq!(secret_from(b"\n".to_vec()), Err(Problem::Empty));
        assert_eq!(
            secret_from(vec![b'a'; MAX_SECRET_BYTES + 1]),
            Err(Problem::TooLarge)
        );
        assert_eq!(secret_from(vec![0xff, 0xfe]), Err(Problem::NotText));
    }

    #[test]
    fn a_missing_file_names_the_flag_and_path_but_never_content() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = read("peer-secret-file", &missing).unwrap_err().to_string();
        assert!(e.starts_with("--peer-secret-file "), "{e}");
        assert!(e.contains("nope"), "{e}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        let e = read("auth-secret-file", &empty).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let good = dir.path().join("good");
        std::fs::write(&good, "hunter2\n").unwrap();
        assert_eq!(read("auth-secret-file", &good).unwrap(), "hunter2");
    }
}
