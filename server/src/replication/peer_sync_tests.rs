//! The state-vector exchange between two nodes' rooms, driven in-process over channels that
//! stand in for a peer link (the real link routes each message to the room exactly like the
//! pump below). Through real servers, which node's room opened first cannot be pinned without
//! timing; here it can: node B has the document live, node A opens it and offers its state
//! vector, and both must end with everything, in one round each way.

use std::sync::Arc;

use bytes::Bytes;
use concord_crdt::yrs::updates::decoder::Decode;
use concord_crdt::yrs::{Doc, StateVector, Text, Transact, WriteTxn};
use concord_crdt::{DocName, IncomingUpdate, NodeId, PeerMessage};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::auth::Identity;
use super::{LinkHandle, Replication};
use crate::config::ServeArgs;
use crate::control::Control;
use crate::handles::{ReadKind, RoomMsg};
use crate::registry::Registry;
use crate::store::SharedStore;
use crate::store::memory::MemoryStore;

struct Node {
    id: NodeId,
    registry: Arc<Registry>,
}

impl Node {
    fn new(name: &str) -> Node {
        let token = CancellationToken::new();
        let store: SharedStore = Arc::new(MemoryStore::new());
        let id = NodeId::parse(name).unwrap();
        let me = Identity {
            node_id: id.clone(),
            region: "r".into(),
            url: String::new(),
        };
        let hub = Replication::new(
            me,
            Some("secret".into()),
            Vec::new(),
            Default::default(),
            store.clone(),
            token.clone(),
        );
        let registry = Registry::new(
            crate::node::room_config(&ServeArgs::parse_from(["concord"])),
            store,
            token,
            Some(hub.clone()),
        );
        hub.start(&registry);
        Node { id, registry }
    }

    fn room(&self, doc: &DocName) -> mpsc::Sender<RoomMsg> {
        self.registry.room(doc).tx
    }

    /// Stores `text` in `doc`, as written by a client of a third node, and waits until durable.
    async fn write(&self, doc: &DocName, text: &str) {
        let d = Doc::new();
        let update = {
            let mut txn = d.transact_mut();
            txn.get_or_insert_text("t").insert(&mut txn, 0, text);
            txn.encode_update_v1()
        };
        let (done, durable) = oneshot::channel();
        self.room(doc)
            .send(RoomMsg::Replicated {
                update: IncomingUpdate::decode(&update).unwrap(),
                origin: Some(crate::store::Origin {
                    node: NodeId::parse("elsewhere").unwrap(),
                    seq: 1,
                }),
                done: Some(done),
            })
            .await
            .unwrap();
        durable.await.unwrap();
    }

    async fn state_vector(&self, doc: &DocName) -> StateVector {
        let (reply, sv) = oneshot::channel();
        self.room(doc)
            .send(RoomMsg::StateVector { reply })
            .await
            .unwrap();
        StateVector::decode_v1(&sv.await.unwrap()).unwrap()
    }

    async fn text(&self, doc: &DocName) -> String {
        let (reply, text) = oneshot::channel();
        self.room(doc)
            .send(RoomMsg::Read {
                kind: ReadKind::Text("t".into()),
                reply,
            })
            .await
            .unwrap();
        String::from_utf8(text.await.unwrap().unwrap()).unwrap()
    }
}

/// The link `from` uses to reach `to`: what `from`'s rooms send it arrives on the receiver.
fn link(from: &Node, to: &Node) -> (LinkHandle, mpsc::Receiver<Bytes>) {
    let (out, rx) = mpsc::channel(64);
    let link = LinkHandle {
        peer: to.id.clone(),
        id: 1,
        dialer: from.id.clone(),
        out,
        control: Arc::new(Control::new(CancellationToken::new())),
    };
    (link, rx)
}

/// Delivers one message that arrived at `at` (from `from`) the way the link does.
async fn deliver(
    at: &Node,
    _from: &Node,
    back: &LinkHandle,
    doc: &DocName,
    bytes: &[u8],
) -> &'static str {
    match PeerMessage::decode(bytes).unwrap() {
        PeerMessage::SyncStep1 { sv, .. } => {
            let sv = StateVector::decode_v1(&sv).unwrap();
            let link = back.clone();
            at.room(doc)
                .send(RoomMsg::PeerSync { link, sv })
                .await
                .unwrap();
            "Step1"
        }
        PeerMessage::SyncStep2 { update, .. } => {
            let update = IncomingUpdate::decode(&update).unwrap();
            let msg = RoomMsg::Replicated {
                update,
                origin: None,
                done: None,
            };
            at.room(doc).send(msg).await.unwrap();
            "Step2"
        }
        PeerMessage::Awareness { .. } => "Awareness",
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn the_node_that_opened_a_document_first_is_repaired_too() {
    let doc = DocName::parse("both/live").unwrap();
    let (a, b) = (Node::new("node-a"), Node::new("node-b"));
    b.write(&doc, "b").await;
    a.write(&doc, "a").await;
    let (a_to_b, mut at_b) = link(&a, &b);
    let (b_to_a, mut at_a) = link(&b, &a);

    // A opened it second: its room offers its state vector; B's room answers.
    let sv = a.state_vector(&doc).await;
    b.room(&doc)
        .send(RoomMsg::PeerSync {
            link: b_to_a.clone(),
            sv,
        })
        .await
        .unwrap();
    let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
    // Until neither side sends anything more: a read is answered after every effect queued
    // before it (answers to peers included), so once both rooms answered one and nothing waits
    // on either link, nothing more will come.
    loop {
        a.text(&doc).await;
        b.text(&doc).await;
        let (m_a, m_b) = (at_a.try_recv().ok(), at_b.try_recv().ok());
        if m_a.is_none() && m_b.is_none() {
            break;
        }
        if let Some(m) = m_a {
            to_a.push(deliver(&a, &b, &a_to_b, &doc, &m).await);
        }
        if let Some(m) = m_b {
            to_b.push(deliver(&b, &a, &b_to_a, &doc, &m).await);
        }
    }
    assert_eq!(
        to_a,
        ["Step2", "Step1"],
        "B answers and asks for what it lacks"
    );
    assert_eq!(to_b, ["Step2"], "A answers and does not ask back");
    let (ta, tb) = (a.text(&doc).await, b.text(&doc).await);
    assert_eq!(ta, tb);
    assert!(ta.contains('a') && ta.contains('b'), "{ta}");
}

#[tokio::test]
async fn a_peer_lacking_nothing_we_have_is_not_asked() {
    let doc = DocName::parse("one/side").unwrap();
    let (a, b) = (Node::new("node-a"), Node::new("node-b"));
    b.write(&doc, "b").await;
    let (b_to_a, mut at_a) = link(&b, &a);
    // A has nothing of the document: B only answers.
    b.room(&doc)
        .send(RoomMsg::PeerSync {
            link: b_to_a,
            sv: StateVector::default(),
        })
        .await
        .unwrap();
    b.text(&doc).await;
    let mut got = Vec::new();
    while let Ok(m) = at_a.try_recv() {
        got.push(PeerMessage::decode(&m).unwrap());
    }
    assert!(
        matches!(got.as_slice(), [PeerMessage::SyncStep2 { .. }]),
        "{got:?}"
    );
}
