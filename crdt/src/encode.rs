//! Outgoing y-websocket frames. Each function returns exactly one message, because v1–v3 clients
//! read only the first message of a frame (`PROTOCOL.md`).

use yrs::StateVector;
use yrs::encoding::write::Write;
use yrs::sync::awareness::AwarenessUpdate;
use yrs::updates::encoder::Encode;

use crate::message::{MSG_AUTH, MSG_AWARENESS, MSG_SYNC, SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE};

fn sync(sub: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.write_var(MSG_SYNC);
    out.write_var(sub);
    out.write_buf(payload);
    out
}

/// `[0, 0, sv]`: our state vector; the client answers with the edits we lack.
pub fn sync_step1(sv: &StateVector) -> Vec<u8> {
    sync(SYNC_STEP1, &sv.encode_v1())
}

/// `[0, 1, update]`: the answer to a Step1. Sent even when `update` holds nothing new, because
/// clients only mark themselves synced on receiving it.
pub fn sync_step2(update: &[u8]) -> Vec<u8> {
    sync(SYNC_STEP2, update)
}

/// `[0, 2, update]`: a live edit.
pub fn update(update: &[u8]) -> Vec<u8> {
    sync(SYNC_UPDATE, update)
}

/// `[1, awareness]`: presence states.
pub fn awareness(update: &AwarenessUpdate) -> Vec<u8> {
    awareness_payload(&update.encode_v1())
}

/// `[1, payload]` for an already encoded awareness payload.
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
    let mut out = Vec::new();
    out.write_var(MSG_AUTH);
    out.write_var(0u8);
    out.write_string(reason);
    out
}
