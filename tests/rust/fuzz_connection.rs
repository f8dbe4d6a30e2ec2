//! Arbitrary bytes through a real socket: every frame either decodes or closes its own connection
//! with 1002/1007, the server survives, and a bystander in the same room keeps converging.

use std::time::Duration;

use concord_crdt::encode;
use concord_crdt::yrs::StateVector;
use concord_tests::{Server, YClient};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

/// Frames that look like y-websocket messages more often than uniform noise would.
fn frame() -> impl Strategy<Value = Vec<u8>> {
    let noise = proptest::collection::vec(any::<u8>(), 0..200);
    let prefixed = (
        prop::sample::select(vec![
            vec![0u8, 0],
            vec![0, 1],
            vec![0, 2],
            vec![1],
            vec![3],
            vec![2, 0],
        ]),
        proptest::collection::vec(any::<u8>(), 0..120),
    )
        .prop_map(|(mut head, body)| {
            head.push(body.len() as u8);
            head.extend(body);
            head
        });
    prop_oneof![noise, prefixed]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_frames_close_only_their_connection() {
    let server = Server::start(&[]).await;
    let url = server.ws_url("fuzz");
    let bystander = YClient::connect(&url).await;

    // proptest generates the frames; the socket round trips need async, so they run here.
    let mut runner = TestRunner::new(Config::default());
    let frames: Vec<Vec<u8>> = (0..300)
        .map(|_| frame().new_tree(&mut runner).unwrap().current())
        .collect();

    for (i, f) in frames.into_iter().enumerate() {
        let c = YClient::connect_raw(&url).await;
        c.send(f.clone());
        // A Step1 after the frame: a connection that survived answers it with a Step2.
        c.send(encode::sync_step1(&StateVector::default()));
        c.wait(|s| s.synced || s.closed.is_some()).await;
        if let Some((code, reason)) = c.closed() {
            assert!(
                code == 1002 || code == 1007,
                "case {i}: frame {f:?} closed with {code} {reason:?}"
            );
            assert!(!reason.is_empty(), "case {i}: close without a reason");
        }
    }
    // The room still works for the connection that behaved.
    bystander.append("t", "still here");
    let check = YClient::connect(&url).await;
    check.wait(|s| s.text("t").contains("still here")).await;
    assert!(bystander.closed().is_none());
    let (status, _) = concord_tests::http_get(&server.http_url("/healthz")).await;
    assert_eq!(status, 200);
    let _ = Duration::ZERO;
}
