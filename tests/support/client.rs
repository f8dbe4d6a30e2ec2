//! A y-websocket client over tokio-tungstenite with a real `yrs` document: it answers the
//! server's Step1, applies what it receives and records every frame and the close code, so tests
//! can assert on both the protocol and the document.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_crdt::message::{ClientMessage, decode_frame};
use concord_crdt::yrs::sync::Awareness;
use concord_crdt::yrs::updates::decoder::Decode;
use concord_crdt::yrs::{
    Doc, GetString, Map, ReadTxn, StateVector, Text, Transact, TransactionMut, Update, WriteTxn,
};
use concord_crdt::{encode, yrs};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// Shared between the client's socket task and the test.
pub struct Shared {
    pub doc: Doc,
    pub awareness: Awareness,
    /// Set when the first Step2 arrived (what y-websocket calls `synced`).
    pub synced: bool,
    /// Every binary frame received, in order.
    pub frames: Vec<Vec<u8>>,
    /// The close frame received (code, reason), or `Some((1006, ..))` if the socket just ended.
    pub closed: Option<(u16, String)>,
}

pub struct YClient {
    pub shared: Arc<Mutex<Shared>>,
    changed: Arc<Notify>,
    out: mpsc::UnboundedSender<Message>,
    /// When set, the socket task stops reading (to simulate a stalled consumer).
    pause: Arc<Mutex<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for YClient {
    /// Dropping a client drops its socket, like closing a browser tab.
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const WAIT: Duration = Duration::from_secs(20);

impl YClient {
    /// Connects and completes the handshake (sends Step1, waits for the Step2).
    pub async fn connect(url: &str) -> YClient {
        let c = Self::connect_raw(url).await;
        let sv = c.shared.lock().unwrap().doc.transact().state_vector();
        c.send(encode::sync_step1(&sv));
        c.wait(|s| s.synced).await;
        c
    }

    /// [`YClient::connect`] taking an owned URL (for `join_all` over many clients).
    pub async fn connect_owned(url: String) -> YClient {
        Self::connect(&url).await
    }

    /// Connects without sending anything.
    pub async fn connect_raw(url: &str) -> YClient {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .expect("websocket connect");
        Self::over(ws)
    }

    /// [`YClient::connect`] over `wss://`, trusting what `tls` trusts.
    pub async fn connect_tls(url: &str, tls: std::sync::Arc<rustls::ClientConfig>) -> YClient {
        let ws = crate::tls::wss_connect(url, tls)
            .await
            .expect("wss connect");
        let c = Self::over(ws);
        let sv = c.shared.lock().unwrap().doc.transact().state_vector();
        c.send(encode::sync_step1(&sv));
        c.wait(|s| s.synced).await;
        c
    }

    /// A client on an open WebSocket, whatever carries it.
    fn over<S>(ws: tokio_tungstenite::WebSocketStream<S>) -> YClient
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let doc = Doc::new();
        let shared = Arc::new(Mutex::new(Shared {
            doc: doc.clone(),
            awareness: Awareness::new(doc),
            synced: false,
            frames: Vec::new(),
            closed: None,
        }));
        let changed = Arc::new(Notify::new());
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let pause = Arc::new(Mutex::new(false));
        let (mut sink, mut stream) = ws.split();
        let (s2, n2, o2, p2) = (shared.clone(), changed.clone(), out.clone(), pause.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = out_rx.recv() => match m {
                        Some(m) => { if sink.send(m).await.is_err() { break } }
                        None => break,
                    },
                    m = stream.next(), if !*p2.lock().unwrap() => match m {
                        Some(Ok(Message::Binary(b))) => handle_frame(&s2, &o2, &b),
                        Some(Ok(Message::Close(f))) => {
                            let f = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                            s2.lock().unwrap().closed = Some(f.unwrap_or((1005, String::new())));
                            n2.notify_waiters();
                            break;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            s2.lock().unwrap().closed = Some((1006, format!("socket error: {e}")));
                            break;
                        }
                        None => break,
                    },
                    _ = tokio::time::sleep(Duration::from_millis(50)), if *p2.lock().unwrap() => {}
                }
                n2.notify_waiters();
            }
            let mut s = s2.lock().unwrap();
            if s.closed.is_none() {
                s.closed = Some((1006, "connection ended without a close frame".into()));
            }
            drop(s);
            n2.notify_waiters();
        });
        YClient {
            shared,
            changed,
            out,
            pause,
            task,
        }
    }

    /// Sends one binary frame as is.
    pub fn send(&self, frame: Vec<u8>) {
        let _ = self.out.send(Message::Binary(frame.into()));
    }

    pub fn send_message(&self, m: Message) {
        let _ = self.out.send(m);
    }

    /// Sends a close frame.
    pub fn close(&self) {
        let _ = self.out.send(Message::Close(Some(CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        })));
    }

    /// Stops (or resumes) reading from the socket, like a client on a stalled network.
    pub fn set_paused(&self, paused: bool) {
        *self.pause.lock().unwrap() = paused;
    }

    /// Makes a local edit and sends it as an update, like a Yjs client does.
    pub fn edit(&self, f: impl FnOnce(&mut TransactionMut)) {
        self.edit_sent(f);
    }

    /// [`YClient::edit`], returning the update frame it sent (to recognise the server's echo of
    /// it with [`Shared::echoed`]).
    pub fn edit_sent(&self, f: impl FnOnce(&mut TransactionMut)) -> Vec<u8> {
        let update = {
            let s = self.shared.lock().unwrap();
            let mut txn = s.doc.transact_mut();
            f(&mut txn);
            txn.encode_update_v1()
        };
        let frame = encode::update(&update);
        self.send(frame.clone());
        frame
    }

    /// Appends `s` to the `Y.Text` root `name`.
    pub fn append(&self, name: &str, s: &str) {
        self.append_sent(name, s);
    }

    /// [`YClient::append`], returning the update frame it sent.
    pub fn append_sent(&self, name: &str, s: &str) -> Vec<u8> {
        self.edit_sent(|txn| {
            let t = txn.get_or_insert_text(name);
            let len = t.len(txn);
            t.insert(txn, len, s);
        })
    }

    /// Sets `key` in the `Y.Map` root `name`.
    pub fn set(&self, name: &str, key: &str, value: &str) {
        self.edit(|txn| {
            let m = txn.get_or_insert_map(name);
            m.insert(txn, key.to_string(), value.to_string());
        });
    }

    pub fn text(&self, name: &str) -> String {
        self.shared.lock().unwrap().text(name)
    }

    pub fn map_get(&self, name: &str, key: &str) -> Option<String> {
        self.shared.lock().unwrap().map_get(name, key)
    }

    /// The document's full state, encoded (to compare replicas byte for byte after normalising).
    pub fn state_vector(&self) -> StateVector {
        self.shared.lock().unwrap().doc.transact().state_vector()
    }

    /// Announces a presence state, like `provider.awareness.setLocalState`.
    pub fn set_presence(&self, json: &str) {
        let frame = {
            let mut s = self.shared.lock().unwrap();
            s.awareness.set_local_state_raw(json);
            let u = s
                .awareness
                .update_with_clients([s.doc.client_id()])
                .unwrap();
            encode::awareness(&u)
        };
        self.send(frame);
    }

    pub fn client_id(&self) -> u64 {
        self.shared.lock().unwrap().doc.client_id().get()
    }

    /// The presence state this client holds for `client_id` (None if unknown or removed).
    pub fn presence_of(&self, client_id: u64) -> Option<String> {
        self.shared.lock().unwrap().presence_of(client_id)
    }

    /// This client's whole document as one v1 update.
    pub fn encoded_state(&self) -> Vec<u8> {
        self.shared
            .lock()
            .unwrap()
            .doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    pub fn closed(&self) -> Option<(u16, String)> {
        self.shared.lock().unwrap().closed.clone()
    }

    pub fn frames(&self) -> Vec<Vec<u8>> {
        self.shared.lock().unwrap().frames.clone()
    }

    /// Waits until `cond` holds, panicking after [`WAIT`].
    pub async fn wait(&self, cond: impl Fn(&Shared) -> bool) {
        self.wait_for(WAIT, cond)
            .await
            .expect("condition not reached in time")
    }

    /// Waits up to `limit` for `cond`; `Err(())` on timeout.
    pub async fn wait_for(
        &self,
        limit: Duration,
        cond: impl Fn(&Shared) -> bool,
    ) -> Result<(), ()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            if cond(&self.shared.lock().unwrap()) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return if cond(&self.shared.lock().unwrap()) {
                    Ok(())
                } else {
                    Err(())
                };
            }
        }
    }

    pub async fn wait_text(&self, name: &str, expected: &str) {
        let r = self.wait_for(WAIT, |s| s.text(name) == expected).await;
        assert!(
            r.is_ok(),
            "text {name:?} is {:?}, expected {expected:?}",
            self.text(name)
        );
    }

    pub async fn wait_closed(&self) -> (u16, String) {
        self.wait(|s| s.closed.is_some()).await;
        self.closed().unwrap()
    }
}

impl Shared {
    /// Whether the server sent `frame` (an update frame this client sent, see
    /// [`YClient::edit_sent`]) back: a room relays each update it accepted, as received, to every
    /// member, the sender included, and in sync durability only once it is committed.
    pub fn echoed(&self, frame: &[u8]) -> bool {
        self.frames.iter().any(|f| f == frame)
    }

    /// The plain text of the `Y.Text` root `name` ("" if absent).
    pub fn text(&self, name: &str) -> String {
        let txn = self.doc.transact();
        txn.get_text(name)
            .map(|t| t.get_string(&txn))
            .unwrap_or_default()
    }

    /// Length of the `Y.Text` root `name`, without building the string.
    pub fn text_len(&self, name: &str) -> u32 {
        let txn = self.doc.transact();
        txn.get_text(name).map(|t| t.len(&txn)).unwrap_or(0)
    }

    pub fn map_get(&self, name: &str, key: &str) -> Option<String> {
        let txn = self.doc.transact();
        txn.get_map(name)
            .and_then(|m| m.get(&txn, key))
            .map(|v| v.to_string(&txn))
    }

    pub fn presence_of(&self, client_id: u64) -> Option<String> {
        let state = self
            .awareness
            .iter()
            .find(|(id, _)| id.get() == client_id)?
            .1;
        state.data.map(|d| d.to_string())
    }
}

fn handle_frame(shared: &Mutex<Shared>, out: &mpsc::UnboundedSender<Message>, frame: &[u8]) {
    let mut s = shared.lock().unwrap();
    s.frames.push(frame.to_vec());
    let Ok(msgs) = decode_frame(frame) else {
        return;
    };
    for m in msgs {
        match m {
            ClientMessage::SyncStep1(sv) => {
                let update = s.doc.transact().encode_state_as_update_v1(&sv);
                let _ = out.send(Message::Binary(encode::sync_step2(&update).into()));
            }
            ClientMessage::SyncStep2(u) => {
                apply(&s.doc, &u.bytes);
                s.synced = true;
            }
            ClientMessage::Update(u) => apply(&s.doc, &u.bytes),
            ClientMessage::Awareness(a) => {
                let _ = s.awareness.apply_update(a);
            }
            _ => {}
        }
    }
}

fn apply(doc: &Doc, bytes: &[u8]) {
    let update = Update::decode_v1(bytes).expect("server sent an undecodable update");
    doc.transact_mut()
        .apply_update(update)
        .expect("server sent an update that does not apply");
}

/// Convenience re-export for tests building documents.
pub use yrs::Options;
