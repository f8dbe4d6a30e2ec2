//! One document that cannot take its replicated updates (its room is still loading a large
//! document, its inbox full) must not hold up the other documents of the link. Driven through
//! the function the link's reader calls for each update, with a store whose load of one document
//! waits until the test lets it: the load that takes long, made deterministic.

use std::sync::Arc;
use std::time::Duration;

use concord_crdt::yrs::{Doc, Text, Transact, WriteTxn};
use concord_crdt::{DocName, NodeId};
use tokio::sync::oneshot;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::deliver::receive_update;
use crate::config::ServeArgs;
use crate::handles::{ReadKind, RoomMsg};
use crate::registry::Registry;
use crate::store::held::HeldStore;
use crate::store::memory::MemoryStore;
use crate::store::{Origin, SharedStore};

const PATIENCE: Duration = Duration::from_secs(5);

fn typed(doc: &Doc, text: &str) -> Vec<u8> {
    let mut txn = doc.transact_mut();
    let t = txn.get_or_insert_text("t");
    let end = t.len(&txn);
    t.insert(&mut txn, end, text);
    txn.encode_update_v1()
}

async fn text(registry: &Arc<Registry>, doc: &DocName) -> String {
    let (reply, answer) = oneshot::channel();
    let read = RoomMsg::Read {
        kind: ReadKind::Text("t".into()),
        reply,
    };
    registry.room(doc).tx.send(read).await.unwrap();
    let bytes = answer.await.unwrap().unwrap_or_default();
    String::from_utf8(bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_document_waits_in_the_log_and_holds_up_no_other() {
    let store = Arc::new(HeldStore::passing(Arc::new(MemoryStore::new())));
    let (slow, quick) = (
        DocName::parse("slow").unwrap(),
        DocName::parse("quick").unwrap(),
    );
    let gate = store.gate_load(&slow);
    let shared: SharedStore = store.clone();
    let config = crate::node::room_config(&ServeArgs::parse_from(["concord", "--doc-queue", "2"]));
    let registry = Registry::new(config, shared, CancellationToken::new(), None);
    let peer = NodeId::parse("peer").unwrap();
    let origin = |seq| {
        Some(Origin {
            node: peer.clone(),
            seq,
        })
    };

    // Fifty updates for a document whose room is still loading: its inbox holds two.
    let writer = Doc::new();
    let mut durable = Vec::new();
    for i in 0..50 {
        let update = typed(&writer, &format!("<{i}>"));
        let handed = receive_update(&registry, &peer, slow.clone(), origin(i + 1), &update);
        let done = timeout(PATIENCE, handed)
            .await
            .unwrap_or_else(|_| panic!("the link waited for a busy document at update {i}"));
        durable.push(done.expect("something to wait for"));
    }
    // Another document's update on the same link goes through at once, and is served.
    let other = Doc::new();
    let update = typed(&other, "quick");
    let handed = receive_update(&registry, &peer, quick.clone(), origin(51), &update);
    let done = timeout(PATIENCE, handed)
        .await
        .expect("the link waited")
        .unwrap();
    timeout(PATIENCE, done)
        .await
        .expect("the other document's update never became durable")
        .unwrap();
    assert_eq!(text(&registry, &quick).await, "quick");

    // The busy document's updates past its full inbox are durable (so acknowledged) while its
    // room still loads; the two in the inbox wait for the room.
    let in_inbox: Vec<_> = durable.drain(..2).collect();
    for (i, done) in durable.into_iter().enumerate() {
        timeout(PATIENCE, done)
            .await
            .unwrap_or_else(|_| {
                panic!("update {} of the busy document never became durable", i + 2)
            })
            .unwrap_or_else(|_| panic!("update {} of the busy document was dropped", i + 2));
    }
    // Once loaded, its room has every one of them, in order.
    gate.add_permits(1);
    for done in in_inbox {
        timeout(PATIENCE, done).await.unwrap().unwrap();
    }
    let want: String = (0..50).map(|i| format!("<{i}>")).collect();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let got = text(&registry, &slow).await;
        if got == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the busy document has {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
