//! Peer-link messages cut into WebSocket frames of at most [`CHUNK`] bytes, and put back together.
//!
//! One message on a link may be a whole document (up to 256 MiB). Sent as one WebSocket frame, it
//! occupies a slow link for minutes: the receiver sees nothing arrive and declares the link dead,
//! and the pings sent to prove otherwise queue behind it. Cut into pieces, it shows progress with
//! every piece and lets pings through in between. Pure logic: no I/O.
//!
//! Every frame starts with one byte saying what it carries: a whole message, a piece that more
//! pieces follow, or the last piece. The values are chosen outside what a bare
//! [`concord_crdt::PeerMessage`] starts with (a small varint tag), so an unframed message from an
//! older node is refused by name instead of being misread.

use axum::extract::ws::close_code;
use bytes::{BufMut, Bytes, BytesMut};

/// Largest payload of one frame. Small enough that a piece crosses even a 2 kB/s link within the
/// dead-link timeout (8 s) and that a ping waits behind at most one piece; large enough that the
/// per-frame cost (this byte, a WebSocket header of up to 14, a wake-up) stays below 0.1%.
pub const CHUNK: usize = 16 * 1024;
/// Largest WebSocket frame (and WebSocket message) a peer link sends or accepts.
pub const MAX_FRAME: usize = CHUNK + 1;

const WHOLE: u8 = 0xF0;
const MORE: u8 = 0xF1;
const LAST: u8 = 0xF2;

/// Why a received frame cannot be part of a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("empty frame on a peer link")]
    Empty,
    #[error(
        "unframed message on a peer link (first byte {0:#04x}): the peer runs an older Concord"
    )]
    Unframed(u8),
    #[error("a whole message arrived in the middle of a chunked one")]
    Interleaved,
    #[error("the last piece of a message arrived without its first")]
    Orphan,
    #[error("peer message larger than {limit} bytes")]
    TooLarge { limit: usize },
}

impl FrameError {
    /// The WebSocket close code that says so.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooLarge { .. } => close_code::SIZE,
            _ => close_code::PROTOCOL,
        }
    }
}

/// The frames of one message, produced one at a time (the message is not copied all at once).
pub struct Pieces {
    message: Bytes,
    /// How much of `message` was already cut off; `None` once the last frame went out.
    offset: Option<usize>,
}

impl Pieces {
    pub fn new(message: Bytes) -> Pieces {
        Pieces {
            message,
            offset: Some(0),
        }
    }

    pub fn is_done(&self) -> bool {
        self.offset.is_none()
    }
}

impl Iterator for Pieces {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        let start = self.offset?;
        let len = self.message.len();
        let end = (start + CHUNK).min(len);
        let kind = if start == 0 && end == len {
            WHOLE
        } else if end == len {
            LAST
        } else {
            MORE
        };
        let mut frame = BytesMut::with_capacity(1 + end - start);
        frame.put_u8(kind);
        frame.put_slice(&self.message[start..end]);
        self.offset = (end < len).then_some(end);
        Some(frame.freeze())
    }
}

/// Puts received frames back into messages of at most `limit` bytes. Memory grows with what
/// actually arrived, never from a size the peer claims.
pub struct Reassembler {
    limit: usize,
    /// The message being reassembled, if a first piece arrived.
    partial: Option<Vec<u8>>,
}

impl Reassembler {
    pub fn new(limit: usize) -> Reassembler {
        Reassembler {
            limit,
            partial: None,
        }
    }

    /// Takes one frame: `Some(message)` when it completes one.
    pub fn push(&mut self, frame: Bytes) -> Result<Option<Bytes>, FrameError> {
        let (&kind, payload) = frame.split_first().ok_or(FrameError::Empty)?;
        match kind {
            WHOLE if self.partial.is_some() => Err(FrameError::Interleaved),
            WHOLE if payload.len() > self.limit => Err(FrameError::TooLarge { limit: self.limit }),
            WHOLE => Ok(Some(frame.slice(1..))),
            LAST if self.partial.is_none() => Err(FrameError::Orphan),
            MORE | LAST => {
                let buf = self.partial.get_or_insert_with(Vec::new);
                let need = buf.len() + payload.len();
                if need > self.limit {
                    self.partial = None;
                    return Err(FrameError::TooLarge { limit: self.limit });
                }
                if need > buf.capacity() {
                    // Doubling, but never past the limit.
                    let target = need.max(buf.capacity() * 2).min(self.limit);
                    buf.reserve_exact(target - buf.len());
                }
                buf.extend_from_slice(payload);
                if kind == LAST {
                    Ok(self.partial.take().map(Bytes::from))
                } else {
                    Ok(None)
                }
            }
            other => Err(FrameError::Unframed(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(len: usize) {
        let message: Bytes = (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into();
        let frames: Vec<Bytes> = Pieces::new(message.clone()).collect();
        assert_eq!(frames.len(), len.div_ceil(CHUNK).max(1), "{len}");
        assert!(frames.iter().all(|f| f.len() <= MAX_FRAME));
        let mut r = Reassembler::new(len);
        let mut out = Vec::new();
        for f in frames {
            out.extend(r.push(f).unwrap());
        }
        assert_eq!(out, vec![message], "{len}");
    }

    #[test]
    fn messages_of_any_size_come_back_whole() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 7] {
            roundtrip(len);
        }
    }

    #[test]
    fn a_small_message_is_one_frame_and_not_copied_on_receipt() {
        let frames: Vec<Bytes> = Pieces::new(Bytes::from_static(b"hi")).collect();
        assert_eq!(frames, vec![Bytes::from_static(b"\xF0hi")]);
        let mut r = Reassembler::new(10);
        assert_eq!(
            r.push(frames[0].clone()).unwrap(),
            Some(Bytes::from_static(b"hi"))
        );
    }

    #[test]
    fn pieces_report_when_done() {
        let mut p = Pieces::new(Bytes::from(vec![0u8; CHUNK + 1]));
        assert!(!p.is_done());
        p.next();
        assert!(!p.is_done());
        p.next();
        assert!(p.is_done());
        assert_eq!(p.next(), None);
    }

    #[test]
    fn the_limit_holds_across_pieces_and_memory_stays_within_it() {
        let limit = 2 * CHUNK + 10;
        let mut r = Reassembler::new(limit);
        let piece = |kind: u8, n: usize| {
            let mut f = vec![kind];
            f.resize(1 + n, 0);
            Bytes::from(f)
        };
        assert_eq!(r.push(piece(MORE, CHUNK)), Ok(None));
        assert_eq!(r.push(piece(MORE, CHUNK)), Ok(None));
        assert!(r.partial.as_ref().unwrap().capacity() <= limit);
        assert_eq!(r.push(piece(LAST, 11)), Err(FrameError::TooLarge { limit }));
        // A fresh message may start after the refusal; one exactly at the limit is fine.
        assert_eq!(r.push(piece(MORE, CHUNK)), Ok(None));
        assert_eq!(r.push(piece(MORE, CHUNK)), Ok(None));
        assert_eq!(r.push(piece(LAST, 10)).unwrap().unwrap().len(), limit);
        assert_eq!(
            r.push(piece(WHOLE, limit + 1)),
            Err(FrameError::TooLarge { limit })
        );
    }

    #[test]
    fn malformed_sequences_are_refused() {
        let mut r = Reassembler::new(1 << 20);
        assert_eq!(r.push(Bytes::new()), Err(FrameError::Empty));
        assert_eq!(
            r.push(Bytes::from_static(b"\xF2x")),
            Err(FrameError::Orphan)
        );
        // An older node's bare `PeerMessage` starts with its tag (0 to 8).
        assert_eq!(
            r.push(Bytes::from_static(b"\x03abc")),
            Err(FrameError::Unframed(3))
        );
        assert_eq!(r.push(Bytes::from_static(b"\xF1x")), Ok(None));
        assert_eq!(
            r.push(Bytes::from_static(b"\xF0y")),
            Err(FrameError::Interleaved)
        );
    }
}
