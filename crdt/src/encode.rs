//! Outgoing y-websocket frames, encoded by `yrs::sync` ([`Message`], [`SyncMessage`]). Each
//! function returns exactly one message, because v1–v3 clients read only the first message of a
//! frame (`PROTOCOL.md`).

use yrs::StateVector;
use yrs::encoding::write::Write;
use yrs::sync::awareness::AwarenessUpdate;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::encoder::Encode;

use crate::message::{MSG_AWARENESS, MSG_SYNC, SYNC_UPDATE};

/// `[0, 0, sv]`: our state vector; the client answers with the edits we lack.
pub fn sync_step1(sv: &StateVector) -> Vec<u8> {
    Message::Sync(SyncMessage::SyncStep1(sv.clone())).encode_v1()
}

/// `[0, 1, update]`: the answer to a Step1. Sent even when `update` holds nothing new, because
/// clients only mark themselves synced on receiving it.
pub fn sync_step2(update: &[u8]) -> Vec<u8> {
    Message::Sync(SyncMessage::SyncStep2(update.to_vec())).encode_v1()
}

/// `[0, 2, update]`: a live edit. Written directly rather than through [`Message`] (whose
/// encoder starts with a generic buffer and takes an owned copy of the update): this runs once
/// per relayed edit. `yrs_reads_every_frame_we_write` checks the bytes are what yrs writes.
pub fn update(update: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(update.len() + 7);
    out.write_var(MSG_SYNC);
    out.write_var(SYNC_UPDATE);
    out.write_buf(update);
    out
}

/// `[1, awareness]`: presence states.
pub fn awareness(update: &AwarenessUpdate) -> Vec<u8> {
    awareness_payload(&update.encode_v1())
}

/// `[1, payload]` for an already encoded awareness payload (presence relayed between regions
/// arrives encoded; `Message::Awareness` would need it decoded first only to encode it again).
pub fn awareness_payload(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.write_var(MSG_AWARENESS);
    out.write_buf(payload);
    out
}

/// `[1, 1, 0]`: an awareness update with no entries. Clients drop a socket that carried no data
/// message for 30 s; this keeps a quiet room's sockets alive and changes nothing.
pub const KEEPALIVE: [u8; 3] = [1, 1, 0];

/// `[2, 0, reason]`: permission denied (clients only log it).
pub fn permission_denied(reason: &str) -> Vec<u8> {
    Message::Auth(Some(reason.to_string())).encode_v1()
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;

    #[test]
    fn yrs_reads_every_frame_we_write() {
        let mut a = yrs::sync::Awareness::new(yrs::Doc::with_client_id(3));
        a.set_local_state_raw(r#"{"user":"ann"}"#);
        let aw = a.update().unwrap();
        assert!(matches!(
            Message::decode_v1(&awareness(&aw)).unwrap(),
            Message::Awareness(u) if u.clients.len() == 1
        ));
        assert!(matches!(
            Message::decode_v1(&KEEPALIVE).unwrap(),
            Message::Awareness(u) if u.clients.is_empty()
        ));
        assert!(matches!(
            Message::decode_v1(&update(&[0, 0])).unwrap(),
            Message::Sync(SyncMessage::Update(u)) if u == [0, 0]
        ));
        // Byte for byte what yrs writes, at a length whose varint takes two bytes.
        let big = vec![7u8; 300];
        assert_eq!(
            update(&big),
            Message::Sync(SyncMessage::Update(big.clone())).encode_v1()
        );
        assert!(matches!(
            Message::decode_v1(&permission_denied("no")).unwrap(),
            Message::Auth(Some(r)) if r == "no"
        ));
    }
}
