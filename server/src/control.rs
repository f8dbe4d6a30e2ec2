//! How a socket ends: [`Control`] is shared by the tasks serving one WebSocket (a client
//! connection or a peer link). Whoever decides it must end records a close code and cancels the
//! token; the writer sends that close frame. It also tracks when the peer was last heard from, to
//! close dead sockets.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Shared by the tasks serving one socket.
pub struct Control {
    /// Cancelled when the connection must end, for whatever reason.
    token: CancellationToken,
    /// The close frame to send; the first reason recorded wins.
    reason: OnceLock<(u16, String)>,
    /// Milliseconds (since `epoch`) of the last frame received, to detect dead sockets.
    last_seen: AtomicU64,
    epoch: Instant,
}

impl Control {
    pub fn new(token: CancellationToken) -> Self {
        Control {
            token,
            reason: OnceLock::new(),
            last_seen: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Ends the connection with `code` (unless another reason was already recorded).
    pub fn close(&self, code: u16, reason: impl Into<String>) {
        let _ = self.reason.set((code, fit_close_reason(reason.into())));
        self.token.cancel();
    }

    /// Records that something arrived from the peer.
    pub fn seen(&self) {
        self.last_seen
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long since anything arrived from the peer.
    pub fn silent_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_seen.load(Ordering::Relaxed)))
    }

    /// Cancelled when the socket must end.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// The recorded close code and reason, if any.
    pub fn reason(&self) -> Option<(u16, String)> {
        self.reason.get().cloned()
    }
}

/// A close frame is a control frame: at most 125 bytes, 2 of them the code. Longer reasons are
/// cut at a character boundary (clients refuse the whole frame otherwise). Logs keep the full text.
const MAX_CLOSE_REASON: usize = 123;

fn fit_close_reason(mut reason: String) -> String {
    if reason.len() > MAX_CLOSE_REASON {
        let mut end = MAX_CLOSE_REASON - 3;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push_str("...");
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_control_frame() {
        assert_eq!(fit_close_reason("short".into()), "short");
        let long = fit_close_reason("é".repeat(100));
        assert!(
            long.len() <= MAX_CLOSE_REASON && long.ends_with("..."),
            "{}",
            long.len()
        );
    }
}
