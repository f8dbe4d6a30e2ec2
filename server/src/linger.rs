//! A lingering close for a connection whose WebSocket framing gave up (a message over
//! `--max-message-size`, a malformed frame): once the close frame is sent, the bytes the client
//! is still sending are read and thrown away until it closes its side.
//!
//! Why: a socket closed with unread data in its receive buffer, or with data still arriving, is
//! answered by the kernel with a reset, and a reset can destroy the close frame before the client
//! reads it: a client still sending an 80 MB message over a 16 MiB limit would see 1006 (no code)
//! instead of 1009. So the server keeps reading, below the WebSocket framing (which stopped at the
//! oversized frame's header), within two bounds: [`DRAIN_MAX_BYTES`] and the caller's time limit.
//! The bytes are read into one fixed buffer of [`DRAIN_BUFFER`] bytes and never kept.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Most bytes discarded after the close frame. The time limit is what bounds how long a
/// connection slot is held; this bounds what one refused client can make the server read in that
/// time (on a fast link, seconds are gigabytes). It exceeds the rest of any message a client
/// would plausibly send (the 16 MiB default limit several times over, an 80 MB paste whole), so
/// a real client gets its close frame and closes cleanly; past it the socket is dropped, by which
/// time the close frame was long delivered.
pub const DRAIN_MAX_BYTES: u64 = 128 << 20;

/// The one buffer the discarded bytes pass through.
pub const DRAIN_BUFFER: usize = 16 * 1024;

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// The client closed its side (or the socket failed): nothing left to protect.
    Closed,
    /// [`DRAIN_MAX_BYTES`] were read and the client was still sending.
    ByteLimit,
    /// The time limit passed first.
    TimeLimit,
}

/// Closes our sending side (the close frame is out: the client sees the end of the stream after
/// it) and discards what arrives until the client closes, `max_bytes` were read, or `max_time`
/// passed. Returns how it ended and how many bytes were thrown away.
pub async fn discard<IO>(io: &mut IO, max_bytes: u64, max_time: Duration) -> (Drained, u64)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut read = 0u64;
    let drain = async {
        // A client that does not read may never take a TLS close_notify; it does not matter,
        // the reads below are what counts.
        let _ = io.shutdown().await;
        // On the heap, and only once draining: an array here would be part of this future, and
        // so of every connection's task, drained or not (16 KiB each, on top of ~10 KiB).
        let mut buf = vec![0u8; DRAIN_BUFFER];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return Drained::Closed,
                Ok(n) => {
                    read += n as u64;
                    if read >= max_bytes {
                        return Drained::ByteLimit;
                    }
                }
            }
        }
    };
    let ended = tokio::time::timeout(max_time, drain)
        .await
        .unwrap_or(Drained::TimeLimit);
    (ended, read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;
    use tokio::time::Instant;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn ends_when_the_client_closes_after_what_it_was_sending() {
        let (mut server, mut client) = duplex(64 * 1024);
        let sender = tokio::spawn(async move {
            client.write_all(&vec![1u8; 300_000]).await.unwrap();
            client.shutdown().await.unwrap();
            // Our side was closed first: the client reads the end right away.
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            rest.len()
        });
        assert_eq!(
            discard(&mut server, 1 << 20, SECOND).await,
            (Drained::Closed, 300_000)
        );
        assert_eq!(sender.await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_the_byte_limit() {
        let (mut server, mut client) = duplex(64 * 1024);
        tokio::spawn(async move {
            let chunk = [2u8; 4096];
            while client.write_all(&chunk).await.is_ok() {}
        });
        let (ended, read) = discard(&mut server, 1 << 20, 10 * SECOND).await;
        assert_eq!(ended, Drained::ByteLimit);
        assert!(
            (1 << 20..(1 << 20) + DRAIN_BUFFER as u64).contains(&read),
            "{read}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_stops_is_cut_off_at_the_time_limit() {
        let (mut server, mut client) = duplex(64 * 1024);
        tokio::spawn(async move {
            while client.write_all(&[3u8; 100]).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let started = Instant::now();
        let (ended, read) = discard(&mut server, u64::MAX, 5 * SECOND).await;
        assert_eq!(ended, Drained::TimeLimit);
        assert_eq!(started.elapsed(), 5 * SECOND);
        assert!(read > 0);
    }
}
