//! The document actor driven directly, over a store whose commits the test releases by hand
//! ([`HeldStore`]): what members, HTTP reads and peer links see of an update waits for its
//! commit, effects come out in commit order, a failed commit relays nothing, and a member's last
//! update survives its own disconnection. Time-dependent behaviour (eviction) runs on tokio's
//! paused clock, so none of these tests sleeps or depends on scheduling luck.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use concord_crdt::yrs::updates::decoder::Decode;
use concord_crdt::yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update, WriteTxn};
use concord_crdt::{ClientMessage, DocName, IncomingUpdate, NodeId, decode_frame};
use concord_server::config::Cli;
use concord_server::control::Control;
use concord_server::handles::{ClientHandle, ConnId};
use concord_server::handles::{ReadKind, RoomMsg};
use concord_server::registry::Registry;
use concord_server::store::held::HeldStore;
use concord_server::store::memory::MemoryStore;
use concord_server::store::{Origin, SharedStore};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// A member as the room sees it, with the test playing its connection's writer.
struct Member {
    id: ConnId,
    frames: mpsc::Receiver<Bytes>,
    control: Arc<Control>,
}

impl Member {
    /// Frames the room has sent so far, without waiting.
    fn drain(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Ok(f) = self.frames.try_recv() {
            out.push(f);
        }
        out
    }

    /// Updates among the frames the room has sent so far (Step2s and updates), decoded.
    fn updates(&mut self) -> Vec<Vec<u8>> {
        self.drain()
            .iter()
            .flat_map(|f| decode_frame(f).unwrap())
            .filter_map(|m| match m {
                ClientMessage::Update(u) | ClientMessage::SyncStep2(u) => Some(u.bytes),
                _ => None,
            })
            .collect()
    }
}

struct Fixture {
    registry: Arc<Registry>,
    store: Arc<HeldStore>,
    doc: DocName,
    shutdown: CancellationToken,
    next_id: ConnId,
}

impl Fixture {
    fn new(extra: &[&str]) -> Fixture {
        let mut args = vec!["concord", "--data-dir", "/nonexistent-unused"];
        args.extend(extra);
        let config = Cli::parse_from(args).serve;
        let store = Arc::new(HeldStore::new(Arc::new(MemoryStore::new())));
        let shared: SharedStore = store.clone();
        let shutdown = CancellationToken::new();
        Fixture {
            registry: Registry::new(
                concord_server::room_config(&config),
                shared,
                shutdown.clone(),
                None,
            ),
            store,
            doc: DocName::parse("room/test").unwrap(),
            shutdown,
            next_id: 1,
        }
    }

    /// Joins a member and takes what the room sends on join (its Step1, presence).
    async fn join(&mut self) -> Member {
        let id = self.next_id;
        self.next_id += 1;
        let (out, frames) = mpsc::channel(64);
        let control = Arc::new(Control::new(self.shutdown.child_token()));
        let client = ClientHandle::new(id, "127.0.0.1:9".parse().unwrap(), out, control.clone());
        self.registry.join(&self.doc, client).await.expect("joins");
        let mut m = Member {
            id,
            frames,
            control,
        };
        m.drain();
        m
    }

    async fn send(&self, msg: RoomMsg) {
        self.registry
            .room(&self.doc)
            .tx
            .send(msg)
            .await
            .expect("room is live");
    }

    async fn frame(&self, m: &Member, msgs: Vec<ClientMessage>) {
        self.send(RoomMsg::Frame { id: m.id, msgs }).await;
    }

    async fn update(&self, m: &Member, bytes: &[u8]) {
        let u = IncomingUpdate::decode(bytes).unwrap();
        self.frame(m, vec![ClientMessage::Update(u)]).await;
    }

    /// Asks the room for the document's text and returns the pending answer.
    async fn read(&self) -> oneshot::Receiver<Option<Vec<u8>>> {
        let (reply, answer) = oneshot::channel();
        self.send(RoomMsg::Read {
            kind: ReadKind::Text("t".into()),
            reply,
        })
        .await;
        answer
    }

    /// Waits until the room has handled everything sent before and returns the text, releasing
    /// held commits as they come (a read is answered after whatever is in flight).
    async fn settle(&self) -> String {
        let mut answer = self.read().await;
        loop {
            tokio::select! {
                a = &mut answer => {
                    let a = a.expect("room answers").unwrap_or_default();
                    return String::from_utf8(a).unwrap();
                }
                _ = self.store.wait_held(1) => { self.store.release(1).await; }
            }
        }
    }
}

fn typed(doc: &Doc, s: &str) -> Vec<u8> {
    let mut txn = doc.transact_mut();
    let t = txn.get_or_insert_text("t");
    let len = t.len(&txn);
    t.insert(&mut txn, len, s);
    txn.encode_update_v1()
}

fn text_of(updates: &[Vec<u8>]) -> String {
    let doc = Doc::new();
    for u in updates {
        doc.transact_mut()
            .apply_update(Update::decode_v1(u).unwrap())
            .unwrap();
    }
    let txn = doc.transact();
    txn.get_text("t")
        .map(|t| t.get_string(&txn))
        .unwrap_or_default()
}

/// Lets the room run everything it can (its task and the writer of the test are on this
/// current-thread runtime): yields until no task makes progress for a while.
async fn run_room() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn no_member_sees_an_update_before_its_commit() {
    let mut f = Fixture::new(&[]);
    let mut a = f.join().await;
    let mut b = f.join().await;
    let author = Doc::new();
    f.update(&a, &typed(&author, "hello")).await;
    f.store.wait_held(1).await;
    run_room().await;
    assert!(
        a.updates().is_empty(),
        "the author's echo went out before the commit"
    );
    assert!(
        b.updates().is_empty(),
        "a member saw the update before the commit"
    );
    f.store.release(1).await;
    assert_eq!(f.settle().await, "hello");
    assert_eq!(text_of(&b.updates()), "hello");
    assert_eq!(text_of(&a.updates()), "hello");
}

#[tokio::test]
async fn a_step2_and_an_http_read_wait_for_the_commit_of_what_they_include() {
    let mut f = Fixture::new(&[]);
    let a = f.join().await;
    let mut c = f.join().await;
    let author = Doc::new();
    f.update(&a, &typed(&author, "durable")).await;
    f.store.wait_held(1).await;
    let sv = StateVector::default();
    f.frame(&c, vec![ClientMessage::SyncStep1(sv)]).await;
    let mut read = f.read().await;
    run_room().await;
    assert!(
        c.updates().is_empty(),
        "a Step2 included an update before its commit"
    );
    assert!(
        read.try_recv().is_err(),
        "an HTTP read answered before the commit"
    );
    f.store.release(1).await;
    let text = read.await.unwrap().unwrap();
    assert_eq!(String::from_utf8(text).unwrap(), "durable");
    run_room().await;
    assert_eq!(text_of(&c.updates()), "durable");
}

#[tokio::test]
async fn a_peer_update_is_acknowledged_only_once_committed_here() {
    let f = Fixture::new(&[]);
    let origin = Doc::new();
    let (done, mut durable) = oneshot::channel();
    f.send(RoomMsg::Replicated {
        update: IncomingUpdate::decode(&typed(&origin, "from afar")).unwrap(),
        origin: Some(Origin {
            node: NodeId::parse("peer-a").unwrap(),
            seq: 1,
        }),
        done: Some(done),
    })
    .await;
    f.store.wait_held(1).await;
    run_room().await;
    assert!(
        durable.try_recv().is_err(),
        "the link was told to acknowledge before the local commit"
    );
    f.store.release(1).await;
    durable.await.expect("acknowledged once committed");
}

#[tokio::test]
async fn effects_come_out_in_commit_order() {
    let mut f = Fixture::new(&[]);
    let a = f.join().await;
    let mut b = f.join().await;
    let author = Doc::new();
    f.update(&a, &typed(&author, "one ")).await;
    f.store.wait_held(1).await;
    f.update(&a, &typed(&author, "two")).await;
    f.store.wait_held(2).await;
    run_room().await;
    assert!(b.updates().is_empty());
    f.store.release(1).await;
    run_room().await;
    let first = b.updates();
    assert_eq!(
        text_of(&first),
        "one ",
        "the first commit released only its own update"
    );
    f.store.release(1).await;
    run_room().await;
    let mut all = first;
    all.extend(b.updates());
    assert_eq!(text_of(&all), "one two");
}

#[tokio::test]
async fn a_failed_commit_closes_members_with_1011_and_relays_nothing() {
    let mut f = Fixture::new(&[]);
    let a = f.join().await;
    let mut b = f.join().await;
    let author = Doc::new();
    f.update(&a, &typed(&author, "lost to a full disk")).await;
    f.store.wait_held(1).await;
    f.store.fail(1, "disk full");
    b.control.token().cancelled().await;
    assert_eq!(b.control.reason().map(|r| r.0), Some(1011));
    assert_eq!(a.control.reason().map(|r| r.0), Some(1011));
    assert!(
        b.updates().is_empty(),
        "an update whose commit failed was relayed"
    );
}

/// D3: a member whose connection already ended (its writer gone) is dropped by the room at the
/// next broadcast; the update it sent just before closing, already in the room's inbox, must
/// still be stored. It used to be skipped as coming from a non-member.
#[tokio::test]
async fn the_last_update_of_a_closing_client_is_kept() {
    let mut f = Fixture::new(&["--durability", "async"]);
    let leaving = f.join().await;
    let mut other = f.join().await;
    // The leaving client's writer is gone: its queue is closed.
    let Member { id, frames, .. } = leaving;
    drop(frames);
    // Another member's update is broadcast first: the send to the closed queue fails and the
    // room forgets the leaving member...
    let them = Doc::new();
    f.update(&other, &typed(&them, "x")).await;
    assert_eq!(f.settle().await, "x");
    // ...then the update the leaving client wrote to its socket before closing is handled.
    let mine = Doc::new();
    let u = typed(&mine, "my last words");
    f.send(RoomMsg::Frame {
        id,
        msgs: vec![ClientMessage::Update(IncomingUpdate::decode(&u).unwrap())],
    })
    .await;
    f.send(RoomMsg::Leave { id }).await;
    let text = f.settle().await;
    assert!(
        text.contains("my last words"),
        "the update was dropped: {text:?}"
    );
    assert!(text_of(&other.updates()).contains("my last words"));
}

/// An idle document leaves memory `--evict-after` its last member left, not before; a write in
/// flight keeps it until committed. Paused time: the clock only moves when the test says so.
#[tokio::test(start_paused = true)]
async fn an_idle_room_is_evicted_after_the_delay_and_not_while_a_write_is_in_flight() {
    let mut f = Fixture::new(&["--evict-after", "30s"]);
    let author = Doc::new();
    let a = f.join().await;
    f.update(&a, &typed(&author, "first ")).await;
    assert_eq!(f.settle().await, "first ");
    f.send(RoomMsg::Leave { id: a.id }).await;
    run_room().await;
    tokio::time::advance(Duration::from_secs(29)).await;
    run_room().await;
    assert_eq!(f.registry.live(), 1, "evicted before --evict-after");
    tokio::time::advance(Duration::from_secs(2)).await;
    run_room().await;
    assert_eq!(f.registry.live(), 0, "not evicted after --evict-after");

    let b = f.join().await;
    f.update(&b, &typed(&author, "second")).await;
    f.store.wait_held(1).await;
    f.send(RoomMsg::Leave { id: b.id }).await;
    run_room().await;
    tokio::time::advance(Duration::from_secs(60)).await;
    run_room().await;
    assert_eq!(f.registry.live(), 1, "evicted with a write in flight");
    f.store.release(1).await;
    run_room().await;
    assert_eq!(f.registry.live(), 0, "not evicted once the write committed");
    // A new room loads what was committed.
    let _c = f.join().await;
    assert_eq!(f.settle().await, "first second");
}

/// D1: a replicated update offered to a room that has closed its inbox in the meantime (here,
/// evicted) goes to the room that replaces it, and is acknowledged once committed there. It used
/// to be dropped, and the link took the failed send for "nothing to wait for" and acknowledged
/// it, so the peer never sent it again.
#[tokio::test(start_paused = true)]
async fn a_replicated_update_for_a_room_that_just_closed_reaches_its_successor() {
    let f = Fixture::new(&["--evict-after", "1s"]);
    let stale = f.registry.room(&f.doc);
    run_room().await;
    tokio::time::advance(Duration::from_secs(2)).await;
    run_room().await;
    assert_eq!(f.registry.live(), 0, "the room was evicted");
    assert!(stale.tx.is_closed());
    let origin = Doc::new();
    let (done, durable) = oneshot::channel();
    let msg = RoomMsg::Replicated {
        update: IncomingUpdate::decode(&typed(&origin, "late")).unwrap(),
        origin: Some(Origin {
            node: NodeId::parse("peer-a").unwrap(),
            seq: 2,
        }),
        done: Some(done),
    };
    assert!(
        f.registry.deliver_via(stale, &f.doc, msg).await.is_ok(),
        "the update was not delivered"
    );
    f.store.wait_held(1).await;
    f.store.release(1).await;
    durable.await.expect("acknowledged once committed");
    assert_eq!(f.settle().await, "late");
}
