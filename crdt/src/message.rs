//! Incoming y-websocket frames, decoded into typed messages.
//!
//! One binary WebSocket frame carries one or more messages
//! (`varUint(type) • payload`, see `PROTOCOL.md`). [`decode_frame`] decodes a whole frame or
//! nothing: a frame with any malformed part is refused as a whole, so a connection is never left
//! half-applied. It never panics on any input, which the property tests in this module check.
//!
//! The codecs are `yrs`'s own (`StateVector::decode_v1`, `Update::decode_v1`, lib0 varints);
//! this module adds validation that `yrs` leaves to the caller: awareness client ids must fit in
//! 53 bits (JavaScript numbers) and awareness states must be JSON, because every other client in
//! the room will `JSON.parse` them.
//!
//! The framing itself is read here rather than by `yrs::sync::MessageReader`, because that
//! decodes a Step1's state vector and an awareness payload as it reads them, before their
//! declared entry counts can be checked against the bytes that follow (a 6-byte frame could make
//! it allocate hundreds of MB). Outgoing frames are `yrs::sync::Message`s ([`crate::encode`]).

use yrs::StateVector;
use yrs::encoding::read::{Cursor, Error as ReadError, Read};
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::updates::decoder::Decode;
use yrs::{ClientID, Update};

/// Message type tags of the y-websocket protocol.
pub const MSG_SYNC: u64 = 0;
pub const MSG_AWARENESS: u64 = 1;
pub const MSG_AUTH: u64 = 2;
pub const MSG_QUERY_AWARENESS: u64 = 3;
/// Sync sub-types.
pub const SYNC_STEP1: u64 = 0;
pub const SYNC_STEP2: u64 = 1;
pub const SYNC_UPDATE: u64 = 2;

/// Largest client id a JavaScript client can hold (`Number.MAX_SAFE_INTEGER` is 2^53 - 1).
const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

/// A document update as received: the exact bytes (what is stored and relayed) and their decoded
/// form (what is applied). Keeping both avoids re-encoding on the hot path.
#[derive(Debug)]
pub struct IncomingUpdate {
    pub bytes: Vec<u8>,
    pub decoded: Update,
}

impl IncomingUpdate {
    /// Decodes a Yjs v1 update, refusing anything `yrs` cannot read.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        // Each client section takes at least 3 bytes (block count, client id, clock).
        check_declared_count(bytes, 3).map_err(DecodeError::InvalidUpdate)?;
        let decoded = guarded(|| Update::decode_v1(bytes))
            .map_err(DecodeError::InvalidUpdate)?
            .map_err(|e| DecodeError::InvalidUpdate(e.to_string()))?;
        Ok(IncomingUpdate {
            bytes: bytes.to_vec(),
            decoded,
        })
    }
}

/// One decoded client message.
#[derive(Debug)]
pub enum ClientMessage {
    /// The client's state vector: answer with a Step2 holding what it lacks.
    SyncStep1(StateVector),
    /// The client's answer to our Step1: its edits we lack (offline edits arrive this way).
    SyncStep2(IncomingUpdate),
    /// A live edit.
    Update(IncomingUpdate),
    /// Presence states (cursor, name, ...).
    Awareness(AwarenessUpdate),
    /// The client asks for every awareness state of the room.
    AwarenessQuery,
    /// An auth message. Clients never need to send one; it is accepted and ignored.
    Auth,
    /// A message type this server does not know. Its length cannot be known, so the rest of the
    /// frame is skipped; the connection stays open (newer clients may add types).
    Unknown(u64),
}

impl ClientMessage {
    /// Whether this message carries a document update (a Step2 or a live edit).
    pub fn is_update(&self) -> bool {
        matches!(self, ClientMessage::SyncStep2(_) | ClientMessage::Update(_))
    }
}

/// Why a frame was refused. Each variant maps to the WebSocket close code the connection is
/// closed with ([`DecodeError::close_code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty frame")]
    Empty,
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("unknown sync message subtype {0}")]
    UnknownSyncType(u64),
    #[error("invalid state vector: {0}")]
    InvalidStateVector(String),
    #[error("invalid update: {0}")]
    InvalidUpdate(String),
    #[error("invalid awareness update: {0}")]
    InvalidAwareness(String),
}

/// WebSocket close code 1002: the frame structure is wrong (bad varint, lying length, bad type).
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// WebSocket close code 1007: the structure is fine but the payload is not a valid update/awareness.
pub const CLOSE_INVALID_PAYLOAD: u16 = 1007;

impl DecodeError {
    pub fn close_code(&self) -> u16 {
        match self {
            DecodeError::Empty | DecodeError::Malformed(_) | DecodeError::UnknownSyncType(_) => {
                CLOSE_PROTOCOL_ERROR
            }
            DecodeError::InvalidStateVector(_)
            | DecodeError::InvalidUpdate(_)
            | DecodeError::InvalidAwareness(_) => CLOSE_INVALID_PAYLOAD,
        }
    }
}

fn malformed(e: ReadError) -> DecodeError {
    DecodeError::Malformed(e.to_string())
}

/// Decodes every message of one binary frame, or refuses the frame.
pub fn decode_frame(frame: &[u8]) -> Result<Vec<ClientMessage>, DecodeError> {
    if frame.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut cur = Cursor::new(frame);
    let mut out = Vec::with_capacity(1);
    while cur.has_content() {
        let tag: u64 = cur.read_var().map_err(malformed)?;
        let msg = match tag {
            MSG_SYNC => decode_sync(&mut cur)?,
            MSG_AWARENESS => {
                let buf = cur.read_buf().map_err(malformed)?;
                ClientMessage::Awareness(decode_awareness(buf)?)
            }
            MSG_AUTH => {
                // `[2, permission, varString(reason)]` in y-protocols; clients do not send it, so
                // read what is there and ignore it.
                let _: u64 = cur.read_var().map_err(malformed)?;
                if cur.has_content() {
                    cur.read_string().map_err(malformed)?;
                }
                ClientMessage::Auth
            }
            MSG_QUERY_AWARENESS => ClientMessage::AwarenessQuery,
            other => {
                out.push(ClientMessage::Unknown(other));
                break;
            }
        };
        out.push(msg);
    }
    Ok(out)
}

fn decode_sync(cur: &mut Cursor<'_>) -> Result<ClientMessage, DecodeError> {
    let sub: u64 = cur.read_var().map_err(malformed)?;
    let buf = cur.read_buf().map_err(malformed)?;
    match sub {
        SYNC_STEP1 => {
            // Each entry takes at least 2 bytes (client id, clock).
            check_declared_count(buf, 2).map_err(DecodeError::InvalidStateVector)?;
            let sv = guarded(|| StateVector::decode_v1(buf))
                .map_err(DecodeError::InvalidStateVector)?
                .map_err(|e| DecodeError::InvalidStateVector(e.to_string()))?;
            Ok(ClientMessage::SyncStep1(sv))
        }
        SYNC_STEP2 => Ok(ClientMessage::SyncStep2(IncomingUpdate::decode(buf)?)),
        SYNC_UPDATE => Ok(ClientMessage::Update(IncomingUpdate::decode(buf)?)),
        other => Err(DecodeError::UnknownSyncType(other)),
    }
}

/// Runs a `yrs` decoder so that an arithmetic overflow on crafted input (a panic, since the
/// workspace builds yrs with `overflow-checks`) is an error for this input, not a crash.
pub(crate) fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|_| "arithmetic overflow in clocks or lengths".to_string())
}

/// Refuses a buffer whose leading count declares more entries than its bytes can hold.
///
/// `yrs` reserves (and hashbrown initialises) room for the declared count before reading any
/// entry, so a 6-byte frame declaring 2^28 state-vector entries would cost hundreds of MB and
/// seconds of CPU. Checking the count against the bytes that follow costs nothing.
fn check_declared_count(buf: &[u8], min_entry_bytes: usize) -> Result<(), String> {
    let mut cur = Cursor::new(buf);
    let n: u64 = cur.read_var().map_err(|e| e.to_string())?;
    let room = (buf.len() - cur.next) / min_entry_bytes;
    if n > room as u64 {
        return Err(format!(
            "declares {n} entries but only {} bytes follow",
            buf.len() - cur.next
        ));
    }
    Ok(())
}

/// Decodes an awareness payload (`varUint(n) • n × (client, clock, varString json)`).
///
/// Written here rather than through `AwarenessUpdate::decode_v1` to check what that leaves
/// unchecked: ids beyond 53 bits, and states that are not JSON.
pub fn decode_awareness(buf: &[u8]) -> Result<AwarenessUpdate, DecodeError> {
    let bad = |what: String| DecodeError::InvalidAwareness(what);
    let mut cur = Cursor::new(buf);
    let n: u64 = cur.read_var().map_err(|e| bad(e.to_string()))?;
    // Every entry takes at least 3 bytes; a count the buffer cannot hold is a lie, refused before
    // anything is allocated for it.
    if n > (buf.len() as u64) / 3 {
        return Err(bad(format!("declares {n} entries in {} bytes", buf.len())));
    }
    let mut clients = std::collections::HashMap::with_capacity(n as usize);
    for _ in 0..n {
        let id: u64 = cur.read_var().map_err(|e| bad(e.to_string()))?;
        if id > MAX_CLIENT_ID {
            return Err(bad(format!("client id {id} exceeds 2^53-1")));
        }
        let clock: u32 = cur.read_var().map_err(|e| bad(e.to_string()))?;
        let json = cur.read_string().map_err(|e| bad(e.to_string()))?;
        serde_json::from_str::<serde_json::value::Value>(json)
            .map_err(|e| bad(format!("state of client {id} is not JSON: {e}")))?;
        clients.insert(
            ClientID::new(id),
            AwarenessUpdateEntry {
                clock,
                json: json.into(),
            },
        );
    }
    if cur.has_content() {
        return Err(bad("trailing bytes after the last entry".into()));
    }
    Ok(AwarenessUpdate { clients })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode;
    use proptest::prelude::*;
    use yrs::{Doc, GetString, Text, Transact};

    fn text_update(s: &str) -> Vec<u8> {
        let doc = Doc::new();
        let t = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        t.insert(&mut txn, 0, s);
        txn.encode_update_v1()
    }

    #[test]
    fn decodes_what_encode_writes() {
        let u = text_update("hi");
        let frame = encode::update(&u);
        let msgs = decode_frame(&frame).unwrap();
        assert!(matches!(&msgs[..], [ClientMessage::Update(x)] if x.bytes == u));

        let sv = StateVector::default();
        let msgs = decode_frame(&encode::sync_step1(&sv)).unwrap();
        assert!(matches!(&msgs[..], [ClientMessage::SyncStep1(_)]));
        let msgs = decode_frame(&encode::sync_step2(&u)).unwrap();
        assert!(matches!(&msgs[..], [ClientMessage::SyncStep2(_)]));
        let doc = Doc::new();
        let applied = doc
            .transact_mut()
            .apply_update(Update::decode_v1(&u).unwrap());
        assert!(applied.is_ok());
        assert_eq!(
            doc.get_or_insert_text("t").get_string(&doc.transact()),
            "hi"
        );
    }

    #[test]
    fn several_messages_in_one_frame() {
        let mut frame = encode::sync_step1(&StateVector::default());
        frame.extend(encode::update(&text_update("x")));
        frame.extend([MSG_QUERY_AWARENESS as u8]);
        assert_eq!(decode_frame(&frame).unwrap().len(), 3);
    }

    #[test]
    fn empty_awareness_is_valid() {
        let msgs = decode_frame(&[1, 1, 0]).unwrap();
        assert!(matches!(&msgs[..], [ClientMessage::Awareness(a)] if a.clients.is_empty()));
    }

    #[test]
    fn typed_errors_and_close_codes() {
        assert_eq!(decode_frame(&[]).unwrap_err(), DecodeError::Empty);
        // varint that never ends
        let e = decode_frame(&[0x80, 0x80]).unwrap_err();
        assert_eq!(e.close_code(), CLOSE_PROTOCOL_ERROR);
        // length says 100 bytes, 2 follow
        let e = decode_frame(&[0, 2, 100, 1, 2]).unwrap_err();
        assert!(matches!(e, DecodeError::Malformed(_)), "{e:?}");
        // well-framed garbage update
        let e = decode_frame(&[0, 2, 3, 0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(e.close_code(), CLOSE_INVALID_PAYLOAD);
        let e = decode_frame(&[0, 7, 0]).unwrap_err();
        assert_eq!(e, DecodeError::UnknownSyncType(7));
        // awareness whose state is not JSON
        let e = decode_frame(&[1, 6, 1, 5, 1, 2, b'{', b'x']).unwrap_err();
        assert_eq!(e.close_code(), CLOSE_INVALID_PAYLOAD);
        // awareness declaring a million entries in a few bytes
        let e = decode_frame(&[1, 4, 0xc0, 0x84, 0x3d, 0]).unwrap_err();
        assert!(matches!(e, DecodeError::InvalidAwareness(_)), "{e:?}");
    }

    #[test]
    fn awareness_client_id_beyond_53_bits_is_refused() {
        // id = 2^53 as a varint: 9 bytes
        let mut payload = vec![1u8];
        let mut v: u64 = 1 << 53;
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                payload.push(b);
                break;
            }
            payload.push(b | 0x80);
        }
        payload.extend([1, 2, b'{', b'}']);
        let mut frame = vec![1, payload.len() as u8];
        frame.extend(payload);
        assert!(matches!(
            decode_frame(&frame),
            Err(DecodeError::InvalidAwareness(_))
        ));
    }

    #[test]
    fn declared_counts_larger_than_the_frame_are_refused() {
        // Step1 whose state vector declares 2^28 entries in 4 bytes.
        let e = decode_frame(&[0, 0, 4, 0x80, 0x80, 0x80, 0x01]).unwrap_err();
        assert!(matches!(e, DecodeError::InvalidStateVector(_)), "{e:?}");
        // Update declaring 2^28 clients.
        let e = decode_frame(&[0, 2, 4, 0x80, 0x80, 0x80, 0x01]).unwrap_err();
        assert!(matches!(e, DecodeError::InvalidUpdate(_)), "{e:?}");
    }

    #[test]
    fn clock_overflow_is_an_invalid_update() {
        // An update whose delete set range `clock + len` overflows u32 (found by proptest).
        let mut body = vec![0u8, 1, 0, 14];
        body.extend([0; 26]);
        body.extend([128, 128, 128, 128, 18, 128, 128, 128, 128, 110, 0]);
        let mut frame = vec![0, 1, body.len() as u8];
        frame.extend(body);
        let e = decode_frame(&frame).unwrap_err();
        assert!(matches!(e, DecodeError::InvalidUpdate(_)), "{e:?}");
    }

    #[test]
    fn unknown_message_type_is_not_an_error() {
        let msgs = decode_frame(&[9, 1, 2, 3]).unwrap();
        assert!(matches!(&msgs[..], [ClientMessage::Unknown(9)]));
    }

    proptest! {
        // A fixed seed: every run tries the same cases (`PROPTEST_RNG_SEED` picks others). A
        // failure is kept in proptest-regressions/ (committed) and replayed first.
        #![proptest_config(ProptestConfig {
            cases: 2048,
            rng_seed: match ProptestConfig::default().rng_seed {
                prop::test_runner::RngSeed::Random => prop::test_runner::RngSeed::Fixed(12),
                chosen => chosen,
            },
            ..ProptestConfig::default()
        })]

        /// Arbitrary bytes never panic the decoder: they decode or give a typed error.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame(&bytes);
        }

        /// Valid-looking prefixes followed by noise: exercises the update and awareness decoders
        /// much deeper than uniform noise does.
        #[test]
        fn structured_noise_never_panics(
            kind in 0u8..4,
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut frame = match kind {
                0 => vec![0, 0],
                1 => vec![0, 1],
                2 => vec![0, 2],
                _ => vec![1],
            };
            let len = body.len();
            frame.push((len & 0x7f) as u8 | if len > 0x7f { 0x80 } else { 0 });
            if len > 0x7f { frame.push((len >> 7) as u8); }
            frame.extend(body);
            // Whatever decodes must also be usable without panicking, as the server uses it.
            if let Ok(msgs) = decode_frame(&frame) {
                let mut state = crate::DocState::new();
                let _ = state.apply_update(IncomingUpdate::decode(&text_update("abc")).unwrap());
                for m in msgs {
                    match m {
                        ClientMessage::SyncStep1(sv) => { let _ = state.diff(&sv); }
                        ClientMessage::SyncStep2(u) | ClientMessage::Update(u) => { let _ = state.apply_update(u); let _ = state.full_state(); }
                        ClientMessage::Awareness(a) => { let _ = state.apply_awareness(a); }
                        _ => {}
                    }
                }
            }
        }

        /// Mutating a real update anywhere gives an update or a typed error, never a panic.
        #[test]
        fn mutated_real_updates_never_panic(
            text in "[a-z]{1,40}",
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let mut u = text_update(&text);
            for (i, b) in flips { let at = i.index(u.len()); u[at] = b; }
            let frame = encode::update(&u);
            if let Ok(msgs) = decode_frame(&frame) {
                // Applying what decoded must not panic either.
                for m in msgs {
                    if let ClientMessage::Update(up) = m {
                        let mut state = crate::DocState::new();
                        let _ = state.apply_update(IncomingUpdate::decode(&up.bytes).unwrap());
                        // The encoded form merges, diffs and materialises what it accepted.
                        let mut state = crate::DocState::new_with(crate::DocMode::Encoded);
                        let _ = state.apply_update(up);
                        let _ = state.diff(&yrs::StateVector::default());
                        let _ = state.diff(&state.state_vector());
                        let _ = state.text("t");
                        let job = state.encoded().unwrap().gc_job().run();
                        state.encoded().unwrap().finish(job);
                    }
                }
            }
        }
    }
}
