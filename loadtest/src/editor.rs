//! One simulated editor: a y-websocket client (tokio-tungstenite) with a real `yrs` document.
//! It syncs like `WebsocketProvider` (Step1/Step2 both ways), applies everything it receives,
//! and while the run is writing, produces real Yjs updates: random typing at a given rate, or
//! the next transactions of an editing trace.
//!
//! While the run writes, received updates are timed on arrival but applied in batches (one
//! transaction per [`APPLY_EVERY`], and always before the editor's own next edit). A transaction
//! per delivery cost the generator a tenth of a core more at 45,000 deliveries/s (0.94 cores
//! against 0.85), on a machine it shares with the server: a busy generator reads its sockets
//! late, and that shows up as server latency.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use concord_crdt::yrs::{Doc, ReadTxn, Transact, Update, WriteTxn};
use concord_crdt::{ClientMessage, decode_frame, encode};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::dial::Dialer;
use crate::places::Places;
use crate::stats::{Local, Stats, UpdateKey};
use crate::trace::Agent;
use crate::typing::{self, Caret};

/// The run's phases, broadcast to every editor.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// Connect and sync; do not write yet.
    Connect,
    /// Produce updates.
    Write,
    /// Stop writing; keep receiving until the end.
    Drain,
    /// Disconnect.
    Done,
}

/// What an editor writes.
pub enum Workload {
    /// Random typing: `rate` updates per second, like a person: a few characters at the cursor,
    /// which moves on as they type; now and then a backspace, or a jump to a random place.
    /// (Uniformly random positions would split the text into a block per keystroke, which no
    /// real document looks like, and make every client walk them all.)
    Random { rate: f64 },
    /// Replays one agent of an editing trace, one transaction per tick at most `rate` per second
    /// (and only once the transactions it depends on have arrived).
    Trace {
        agent: std::sync::Mutex<Agent>,
        rate: f64,
    },
}

pub struct Editor {
    pub id: usize,
    pub region: usize,
    /// The document's WebSocket URL, with `?token=` when the run has tokens.
    pub url: String,
    /// How to reach it (TLS for `wss://`).
    pub dialer: Dialer,
    pub doc: Doc,
    /// Editors of this document (every one receives each update).
    pub receivers: u32,
    pub workload: Workload,
    /// False for read-only editors.
    pub writes: bool,
    /// Set at the first Step2 (counted once, not again after reconnects).
    pub synced: std::sync::atomic::AtomicBool,
    /// Where random typing goes next: just after the last character this editor typed, wherever
    /// others' edits moved it (as an editor maps its cursor through remote changes). Kept as a
    /// character offset instead, others' inserts before it would shift the text under it and
    /// every keystroke would land in a new spot, splitting the text into an item per keystroke;
    /// typing on from one's own last character extends one item instead, as real typing does.
    /// Held by the ids either side of it, so that typing there needs no walk of the text
    /// ([`crate::typing`]).
    pub cursor: std::sync::Mutex<Option<Caret>>,
    /// Where random typing can jump to, learnt from the updates received ([`crate::places`]).
    pub places: std::sync::Mutex<Places>,
}

/// Longest a received update waits to be applied while the run writes (see the module doc).
const APPLY_EVERY: Duration = Duration::from_millis(100);

/// Received updates not applied yet, and since when the oldest has waited.
#[derive(Default)]
struct Backlog {
    updates: Vec<Update>,
    since: Option<Instant>,
}

impl Backlog {
    fn push(&mut self, update: Update) {
        self.since.get_or_insert_with(Instant::now);
        self.updates.push(update);
    }

    /// Checked as frames arrive (a timer per editor would cost a wake-up per editor per
    /// period); a backlog left when they stop is applied at the next edit or phase change.
    fn due(&self) -> bool {
        self.since.is_some_and(|t| t.elapsed() >= APPLY_EVERY)
    }

    fn take(&mut self) -> Vec<Update> {
        self.since = None;
        std::mem::take(&mut self.updates)
    }
}

/// Root text every editor writes to.
pub const TEXT: &str = "t";

fn ws_config() -> WebSocketConfig {
    // Small buffers: thousands of editors share this process.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(256 << 20))
}

impl Editor {
    pub async fn run(self, stats: Arc<Stats>, mut phase: watch::Receiver<Phase>) {
        let mut local = Local::new(self.region);
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        while *phase.borrow() != Phase::Done {
            if !first {
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(3));
            }
            first = false;
            let mut pending = Backlog::default();
            let outcome = self
                .session(&stats, &mut phase, &mut local, &mut pending)
                .await;
            self.apply(&mut pending);
            match outcome {
                Ok(()) => break,
                Err(_) => stats.errors.fetch_add(1, Ordering::Relaxed),
            };
        }
        stats.flush(&mut local);
    }

    /// One connection; `Ok` when the run is over, `Err` when the socket failed.
    async fn session(
        &self,
        stats: &Stats,
        phase: &mut watch::Receiver<Phase>,
        local: &mut Local,
        pending: &mut Backlog,
    ) -> Result<(), String> {
        let mut ws = self.dialer.connect(&self.url, ws_config()).await?;
        let sv = self.doc.transact().state_vector();
        ws.send(Message::Binary(encode::sync_step1(&sv).into()))
            .await
            .map_err(|e| e.to_string())?;

        let period = match &self.workload {
            Workload::Random { rate } | Workload::Trace { rate, .. } => {
                Duration::from_secs_f64(1.0 / rate.max(0.001))
            }
        };
        // Spread editors' ticks over the period instead of firing together.
        let offset = period.mul_f64(rand::rng().random_range(0.0..1.0));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut flush = tokio::time::interval(Duration::from_secs(1));
        loop {
            let running = *phase.borrow() == Phase::Write;
            let writing = self.writes && running;
            tokio::select! {
                changed = phase.changed() => {
                    // Out of the write phase, updates are applied as they come (convergence is
                    // timed on the documents).
                    self.apply(pending);
                    if changed.is_err() || *phase.borrow() == Phase::Done {
                        let _ = ws.close(None).await;
                        return Ok(());
                    }
                }
                _ = flush.tick() => stats.flush(local),
                _ = tick.tick(), if writing => {
                    self.apply(pending);
                    let Some((key, update)) = self.next_edit() else { continue };
                    stats.sent(key, self.region, self.id, self.receivers, local);
                    ws.send(Message::Binary(encode::update(&update).into())).await.map_err(|e| e.to_string())?;
                }
                msg = ws.next() => {
                    let frame = match msg {
                        Some(Ok(Message::Binary(b))) => b,
                        Some(Ok(Message::Close(_))) | None => return Err("closed by the server".into()),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Err(e.to_string()),
                    };
                    let defer = running.then_some(&mut *pending);
                    for reply in self.receive(&frame, stats, local, defer) {
                        ws.send(Message::Binary(reply.into())).await.map_err(|e| e.to_string())?;
                    }
                    if pending.due() {
                        self.apply(pending);
                    }
                }
            }
        }
    }

    /// Applies updates received and held back, in one transaction.
    fn apply(&self, pending: &mut Backlog) {
        let updates = pending.take();
        if updates.is_empty() {
            return;
        }
        let mut txn = self.doc.transact_mut();
        for u in updates {
            let _ = txn.apply_update(u);
        }
    }

    /// Applies a frame, or with `defer` holds its updates there to be applied later; returns
    /// what to answer (a Step2 to the server's Step1).
    fn receive(
        &self,
        frame: &[u8],
        stats: &Stats,
        local: &mut Local,
        mut defer: Option<&mut Backlog>,
    ) -> Vec<Vec<u8>> {
        let mut replies = Vec::new();
        let Ok(msgs) = decode_frame(frame) else {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            return replies;
        };
        for m in msgs {
            match m {
                ClientMessage::SyncStep1(sv) => {
                    if let Some(pending) = defer.as_deref_mut() {
                        self.apply(pending);
                    }
                    let diff = self.doc.transact().encode_state_as_update_v1(&sv);
                    replies.push(encode::sync_step2(&diff));
                }
                ClientMessage::SyncStep2(u) => {
                    self.learn(&u.bytes);
                    let _ = self.doc.transact_mut().apply_update(u.decoded);
                    if !self.synced.swap(true, Ordering::Relaxed) {
                        stats.synced.fetch_add(1, Ordering::Relaxed);
                    }
                }
                ClientMessage::Update(u) => {
                    if let Some((client, clock)) = u
                        .decoded
                        .state_vector_lower()
                        .iter()
                        .next()
                        .map(|(c, k)| (c.get(), *k))
                    {
                        stats.received((client, clock), self.region, self.id, local);
                    }
                    self.learn(&u.bytes);
                    match defer.as_deref_mut() {
                        Some(pending) => pending.push(u.decoded),
                        None => {
                            let _ = self.doc.transact_mut().apply_update(u.decoded);
                        }
                    }
                }
                _ => {}
            }
        }
        replies
    }

    /// A random typist learns the places it can jump to from each update it receives (its own
    /// echoed back included), without walking the text. An update it cannot read (content a
    /// typed text never holds) only teaches it nothing.
    fn learn(&self, update: &[u8]) {
        if self.writes && matches!(self.workload, Workload::Random { .. }) {
            let _ = self.places.lock().unwrap().learn(update, &mut rand::rng());
        }
    }

    /// Makes the next local edit; returns its key and the encoded update.
    fn next_edit(&self) -> Option<(Option<UpdateKey>, Vec<u8>)> {
        let client = self.doc.client_id();
        let mut txn = self.doc.transact_mut();
        let clock = txn.state_vector().get(&client);
        let text = txn.get_or_insert_text(TEXT);
        match &self.workload {
            Workload::Random { .. } => {
                let mut cursor = self.cursor.lock().unwrap();
                *cursor = Some(typing::keystroke(
                    &text,
                    &mut txn,
                    *cursor,
                    &mut self.places.lock().unwrap(),
                    &mut rand::rng(),
                ));
            }
            Workload::Trace { agent, .. } => {
                drop(txn);
                let live = self.doc.transact().state_vector();
                let seen = |k: &UpdateKey| live.get(&concord_crdt::yrs::ClientID::new(k.0)) > k.1;
                return agent.lock().unwrap().next(seen);
            }
        }
        let update = txn.encode_update_v1();
        // A deletion-only edit adds no block, so it has no id to be matched by: sent, unmeasured.
        let key = (txn.state_vector().get(&client) != clock).then_some((client.get(), clock));
        Some((key, update))
    }
}
