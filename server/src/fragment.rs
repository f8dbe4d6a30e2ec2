//! Large messages to clients go out as WebSocket fragments.
//!
//! tungstenite copies each frame it sends into the connection's write buffer, and that buffer
//! keeps the largest capacity it ever reached: a connection sent one 1.9 MB Step2 as a single
//! frame would hold 1.9 MB for as long as it stays open, idle or not. Split into fragments of
//! [`FRAGMENT`] bytes (RFC 6455 §5.4: a first frame with FIN clear, continuation frames, the last
//! with FIN set), the buffer never grows past about one fragment. Each fragment is a slice of the
//! shared frame, so splitting copies nothing; browsers and `ws` reassemble the message before
//! the application sees it.

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// Largest payload of one frame sent to a client. Small enough that what a connection keeps
/// after a large message stays well under what an idle connection costs anyway (about 10 KiB),
/// large enough that the frame headers (4 bytes each) add 0.1 %.
pub const FRAGMENT: usize = 4 * 1024;

/// The WebSocket messages that carry the binary message `frame`: one message when it fits in a
/// fragment, else its fragments in order.
pub fn binary(frame: Bytes) -> impl Iterator<Item = Message> {
    let len = frame.len();
    let single = (len <= FRAGMENT).then(|| Message::Binary(frame.clone()));
    let parts = if single.is_some() {
        0
    } else {
        len.div_ceil(FRAGMENT)
    };
    let fragments = (0..parts).map(move |i| {
        let start = i * FRAGMENT;
        let end = (start + FRAGMENT).min(len);
        let opcode = if i == 0 { Data::Binary } else { Data::Continue };
        Message::Frame(Frame::message(
            frame.slice(start..end),
            OpCode::Data(opcode),
            end == len,
        ))
    });
    single.into_iter().chain(fragments)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(len: usize) -> Vec<Message> {
        binary(Bytes::from((0..len).map(|i| i as u8).collect::<Vec<_>>())).collect()
    }

    #[test]
    fn a_small_message_is_one_binary_message() {
        for len in [0, 1, FRAGMENT] {
            let sent = frames(len);
            assert_eq!(sent.len(), 1);
            assert!(matches!(&sent[0], Message::Binary(b) if b.len() == len));
        }
    }

    #[test]
    fn a_large_message_is_fragments_that_reassemble_to_it() {
        for len in [FRAGMENT + 1, 3 * FRAGMENT, 3 * FRAGMENT + 7, 1_900_000] {
            let sent = frames(len);
            assert_eq!(sent.len(), len.div_ceil(FRAGMENT));
            let mut joined = Vec::new();
            for (i, msg) in sent.iter().enumerate() {
                let Message::Frame(f) = msg else {
                    panic!("fragment {i} is not a raw frame")
                };
                let want = if i == 0 { Data::Binary } else { Data::Continue };
                assert_eq!(f.header().opcode, OpCode::Data(want));
                assert_eq!(f.header().is_final, i == sent.len() - 1);
                assert!(f.payload().len() <= FRAGMENT);
                joined.extend_from_slice(f.payload());
            }
            assert_eq!(joined, (0..len).map(|i| i as u8).collect::<Vec<_>>());
        }
    }
}
