//! Random frames through a real socket, each one labelled by construction with what docs/api.md
//! ("Limits and close codes") promises for it: a valid frame is served (the connection stays open,
//! its Step1 is answered and its updates are applied), and garbage always closes its own
//! connection with the documented code (1002 malformed: bad varint, length past the end, unknown
//! sync subtype, empty frame; 1007 well-framed but undecodable payload; 1003 text frame) and
//! changes nothing, not even by a valid message earlier in the same frame. The crdt decoder is
//! checked against every label too (the server uses it to decide). The server survives, and a
//! bystander in the same room keeps converging.
//!
//! The frames come from a proptest strategy with a fixed seed (`PROPTEST_RNG_SEED` overrides
//! it), so every run sends the same frames; the socket round trips are async, so they run here
//! rather than inside proptest's runner.

use concord_crdt::encode;
use concord_crdt::message::{ClientMessage, decode_frame};
use concord_crdt::yrs::encoding::write::Write;
use concord_crdt::yrs::{Doc, StateVector, Text, Transact};
use concord_tests::client::Shared;
use concord_tests::{Server, YClient};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use tokio_tungstenite::tungstenite::Message;

/// How many frames are sent, each on its own connection.
const CASES: usize = 300;

/// What one generated frame is: the parameters are random, the marker text is added when the
/// frame is built, so every update carries a text the test can look for.
#[derive(Debug, Clone)]
enum Plan {
    // Valid frames.
    /// A real update (Step2 when `step2`) inserting the marker and `pad`.
    Update { step2: bool, pad: String },
    /// A Step1 with an arbitrary (well-formed) state vector.
    Step1(Vec<(u64, u32)>),
    /// Presence states: ids below 2^53, JSON states.
    Awareness(Vec<(u64, u32, &'static str)>),
    /// An awareness query.
    QueryAwareness,
    /// A message type the server does not know: the rest of the frame is skipped.
    UnknownType { tag: u8, rest: Vec<u8> },
    /// A Step1, an update and an awareness query in one frame.
    Several { pad: String },
    // Garbage.
    /// An empty binary frame (1002).
    Empty,
    /// Valid messages, then a varint cut short by the end of the frame (1002): as a message type,
    /// a sync subtype, or a payload length.
    BadVarint { at: u8, bytes: Vec<u8> },
    /// A payload declaring more bytes than follow (1002).
    LengthPastEnd {
        tag: u8,
        declared_extra: u16,
        body: Vec<u8>,
    },
    /// A sync message with an unknown subtype (1002).
    UnknownSyncType { sub: u8, body: Vec<u8> },
    /// An update or Step2 whose payload cannot be decoded: a client count larger than its
    /// bytes could hold (1007).
    UndecodableUpdate {
        step2: bool,
        count: u32,
        body: Vec<u8>,
    },
    /// A Step1 whose state vector declares more entries than its bytes could hold (1007).
    UndecodableStateVector { count: u32, body: Vec<u8> },
    /// An awareness payload that is not acceptable: a state that is not JSON, a client id of 2^53
    /// or more, or bytes after the last entry (1007).
    BadAwareness { how: u8, id: u64 },
    /// A text frame (1003).
    Text(String),
    /// A valid update with its marker, then garbage in the same frame: refused as a whole.
    ValidThenGarbage { pad: String, garbage: Box<Plan> },
    /// Random bytes, labelled by the crdt decoder (cases it accepts as updates are left out:
    /// whether those apply depends on the room's state).
    Noise(Vec<u8>),
}

/// What the server must do with a frame.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// Served: the connection stays open, a later Step1 is answered, these markers are applied.
    Accepted { marks: Vec<String> },
    /// Refused: closed with this code; these markers (in the frame) are never applied.
    Refused { code: u16, marks: Vec<String> },
}

#[derive(Debug)]
struct Case {
    message: Message,
    expect: Expect,
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> + Clone {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// Garbage on its own (not `Empty` or `Text`, which cannot follow a valid message in a frame).
fn garbage_in_frame() -> impl Strategy<Value = Plan> {
    prop_oneof![
        (0u8..3, proptest::collection::vec(0x80u8..=0xff, 1..12))
            .prop_map(|(at, bytes)| Plan::BadVarint { at, bytes }),
        (0u8..4, 1u16..2000, bytes(60)).prop_map(|(tag, declared_extra, body)| {
            Plan::LengthPastEnd {
                tag,
                declared_extra,
                body,
            }
        }),
        (3u8..0x80, bytes(40)).prop_map(|(sub, body)| Plan::UnknownSyncType { sub, body }),
        (any::<bool>(), 1u32..1 << 28, bytes(40))
            .prop_map(|(step2, count, body)| { Plan::UndecodableUpdate { step2, count, body } }),
        (1u32..1 << 28, bytes(40))
            .prop_map(|(count, body)| Plan::UndecodableStateVector { count, body }),
        (0u8..3, (1u64 << 53)..u64::MAX).prop_map(|(how, id)| Plan::BadAwareness { how, id }),
    ]
}

fn plan() -> impl Strategy<Value = Plan> {
    let pad = "[a-z ]{0,20}";
    let json = prop::sample::select(vec![
        r#"{"user":{"name":"ann"}}"#,
        "null",
        "1",
        r#""s""#,
        "[]",
    ]);
    let valid = prop_oneof![
        (any::<bool>(), pad).prop_map(|(step2, pad)| Plan::Update { step2, pad }),
        proptest::collection::vec((0u64..1 << 53, any::<u32>()), 0..6).prop_map(Plan::Step1),
        proptest::collection::vec((0u64..1 << 53, any::<u32>(), json), 0..4)
            .prop_map(Plan::Awareness),
        Just(Plan::QueryAwareness),
        (4u8..0x80, bytes(40)).prop_map(|(tag, rest)| Plan::UnknownType { tag, rest }),
        pad.prop_map(|pad| Plan::Several { pad }),
    ];
    let garbage = prop_oneof![
        1 => Just(Plan::Empty),
        6 => garbage_in_frame(),
        1 => "[ -~]{0,30}".prop_map(Plan::Text),
        2 => (pad, garbage_in_frame()).prop_map(|(pad, g)| Plan::ValidThenGarbage {
            pad,
            garbage: Box::new(g),
        }),
        2 => bytes(200).prop_map(Plan::Noise),
    ];
    // Garbage comes in many more shapes; valid frames are a third.
    prop_oneof![1 => valid, 2 => garbage]
}

/// A real update frame (`[0, 2 or 1, update]`) inserting `text` into the text root `t` of a
/// fresh document (its own client id, so it applies anywhere).
fn update_frame(step2: bool, text: &str) -> Vec<u8> {
    let doc = Doc::new();
    let t = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    t.insert(&mut txn, 0, text);
    let update = txn.encode_update_v1();
    if step2 {
        encode::sync_step2(&update)
    } else {
        encode::update(&update)
    }
}

/// `[tag, sub?, varUint(len), body]` with an honest length.
fn message(head: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = head.to_vec();
    out.write_buf(body);
    out
}

/// A buffer starting with the count `count` followed by `body`.
fn counted(count: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.write_var(count);
    out.extend_from_slice(body);
    out
}

/// Builds the frame for case `i`; its marker is `<m{i}>`.
fn build(plan: &Plan, i: usize) -> Case {
    let mark = format!("<m{i}>");
    let binary = |frame: Vec<u8>, expect: Expect| Case {
        message: Message::Binary(frame.into()),
        expect,
    };
    let accepted = |marks: Vec<String>| Expect::Accepted { marks };
    let refused = |code: u16| Expect::Refused {
        code,
        marks: vec![],
    };
    match plan {
        Plan::Update { step2, pad } => binary(
            update_frame(*step2, &format!("{mark}{pad}")),
            accepted(vec![mark]),
        ),
        Plan::Step1(entries) => {
            let mut sv = StateVector::default();
            for (client, clock) in entries {
                sv.set_max(concord_crdt::yrs::ClientID::new(*client), *clock);
            }
            binary(encode::sync_step1(&sv), accepted(vec![]))
        }
        Plan::Awareness(entries) => {
            let mut payload = Vec::new();
            payload.write_var(entries.len() as u64);
            for (id, clock, json) in entries {
                payload.write_var(*id);
                payload.write_var(*clock);
                payload.write_string(json);
            }
            binary(message(&[1], &payload), accepted(vec![]))
        }
        Plan::QueryAwareness => binary(vec![3], accepted(vec![])),
        Plan::UnknownType { tag, rest } => {
            let mut frame = vec![*tag];
            frame.extend_from_slice(rest);
            binary(frame, accepted(vec![]))
        }
        Plan::Several { pad } => {
            let mut frame = encode::sync_step1(&StateVector::default());
            frame.extend(update_frame(false, &format!("{mark}{pad}")));
            frame.push(3);
            binary(frame, accepted(vec![mark]))
        }
        Plan::Empty => binary(vec![], refused(1002)),
        Plan::BadVarint { at, bytes } => {
            // `bytes` all have the continuation bit set: the varint runs into the end.
            let mut frame = match at {
                0 => vec![],
                1 => vec![0],
                _ => vec![0, 2],
            };
            frame.extend_from_slice(bytes);
            binary(frame, refused(1002))
        }
        Plan::LengthPastEnd {
            tag,
            declared_extra,
            body,
        } => {
            let mut frame = match tag {
                0 => vec![0, 0],
                1 => vec![0, 1],
                2 => vec![0, 2],
                _ => vec![1],
            };
            frame.write_var(body.len() as u64 + u64::from(*declared_extra));
            frame.extend_from_slice(body);
            binary(frame, refused(1002))
        }
        Plan::UnknownSyncType { sub, body } => binary(message(&[0, *sub], body), refused(1002)),
        Plan::UndecodableUpdate { step2, count, body } => {
            // Each client section takes at least 3 bytes: cut the body below what `count` needs.
            let body = &body[..body.len().min(3 * *count as usize - 1)];
            binary(
                message(&[0, if *step2 { 1 } else { 2 }], &counted(*count, body)),
                refused(1007),
            )
        }
        Plan::UndecodableStateVector { count, body } => {
            // Each entry takes at least 2 bytes.
            let body = &body[..body.len().min(2 * *count as usize - 1)];
            binary(message(&[0, 0], &counted(*count, body)), refused(1007))
        }
        Plan::BadAwareness { how, id } => {
            let mut payload = Vec::new();
            payload.write_var(1u32);
            match how {
                0 => {
                    payload.write_var(7u32);
                    payload.write_var(1u32);
                    payload.write_string("{not json");
                }
                1 => {
                    payload.write_var(*id);
                    payload.write_var(1u32);
                    payload.write_string("{}");
                }
                _ => {
                    payload.write_var(7u32);
                    payload.write_var(1u32);
                    payload.write_string("{}");
                    payload.push(0);
                }
            }
            binary(message(&[1], &payload), refused(1007))
        }
        Plan::Text(s) => Case {
            message: Message::Text(s.clone().into()),
            expect: refused(1003),
        },
        Plan::ValidThenGarbage { pad, garbage } => {
            let Case {
                message: Message::Binary(tail),
                expect: Expect::Refused { code, .. },
            } = build(garbage, i)
            else {
                unreachable!("garbage_in_frame makes refused binary frames")
            };
            let mut frame = update_frame(false, &format!("{mark}{pad}"));
            frame.extend_from_slice(&tail);
            binary(
                frame,
                Expect::Refused {
                    code,
                    marks: vec![mark],
                },
            )
        }
        Plan::Noise(frame) => {
            let expect = match decode_frame(frame) {
                Err(e) => refused(e.close_code()),
                Ok(_) => accepted(vec![]),
            };
            binary(frame.clone(), expect)
        }
    }
}

/// Noise the decoder reads as an update is left out: whether it applies depends on the room.
fn predictable(plan: &Plan) -> bool {
    match plan {
        Plan::Noise(frame) => match decode_frame(frame) {
            Ok(msgs) => !msgs.iter().any(|m| m.is_update()),
            Err(_) => true,
        },
        _ => true,
    }
}

/// The generated cases: deterministic (seeded), and each label agreeing with the crdt decoder.
fn cases() -> Vec<(Plan, Case)> {
    let seed = match Config::default().rng_seed {
        RngSeed::Random => RngSeed::Fixed(0x0c0c_04d5),
        chosen => chosen,
    };
    let mut runner = TestRunner::new(Config {
        rng_seed: seed,
        ..Config::default()
    });
    let strategy = plan().prop_filter("unpredictable noise", predictable);
    (0..CASES)
        .map(|i| {
            let plan = strategy.new_tree(&mut runner).unwrap().current();
            let case = build(&plan, i);
            // The server decides with the crdt decoder: it must agree with every label.
            if let Message::Binary(frame) = &case.message {
                let decoded = decode_frame(frame).map_err(|e| e.close_code());
                match &case.expect {
                    Expect::Accepted { .. } => {
                        assert!(decoded.is_ok(), "case {i}: {plan:?} refused: {decoded:?}")
                    }
                    Expect::Refused { code, .. } => assert_eq!(
                        decoded.err(),
                        Some(*code),
                        "case {i}: {plan:?}: the decoder disagrees with the label"
                    ),
                }
            }
            (plan, case)
        })
        .collect()
}

/// How many Step2s the server sent.
fn step2s(s: &Shared) -> usize {
    s.frames.iter().filter(|f| f.starts_with(&[0, 1])).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_garbage_frame_is_refused_and_every_valid_one_served() {
    let server = Server::start(&[]).await;
    let url = server.ws_url("fuzz");
    let bystander = YClient::connect(&url).await;

    let cases = cases();
    let (mut applied, mut refused) = (Vec::new(), Vec::new());
    let mut codes = std::collections::BTreeMap::<u16, usize>::new();
    for (i, (plan, case)) in cases.into_iter().enumerate() {
        // Step1s in a served frame are answered too, each with a Step2.
        let step1s = match &case.message {
            Message::Binary(frame) => decode_frame(frame).map_or(0, |msgs| {
                msgs.iter()
                    .filter(|m| matches!(m, ClientMessage::SyncStep1(_)))
                    .count()
            }),
            _ => 0,
        };
        let c = YClient::connect_raw(&url).await;
        c.send_message(case.message);
        // A Step1 after the frame: a connection that was served answers it with a Step2 (its
        // last), which (sync durability) carries everything the room accepted before it, this
        // frame included.
        c.send(encode::sync_step1(&StateVector::default()));
        c.wait(|s| step2s(s) > step1s || s.closed.is_some()).await;
        match case.expect {
            Expect::Accepted { marks } => {
                assert_eq!(c.closed(), None, "case {i}: valid {plan:?} was refused");
                let text = c.text("t");
                for m in &marks {
                    assert!(text.contains(m), "case {i}: {plan:?}: {m} not applied");
                }
                applied.extend(marks);
            }
            Expect::Refused { code, marks } => {
                // Not closed means the Step1 after it was answered: the garbage was served.
                let Some((got, reason)) = c.closed() else {
                    panic!("case {i}: garbage {plan:?} was served, not refused with {code}");
                };
                assert_eq!(
                    (got, step2s(&c.shared.lock().unwrap())),
                    (code, 0),
                    "case {i}: garbage {plan:?} closed with {got} {reason:?}, expected {code} \
                     and no Step1 answered"
                );
                assert!(!reason.is_empty(), "case {i}: close without a reason");
                *codes.entry(code).or_default() += 1;
                refused.extend(marks);
            }
        }
    }
    eprintln!(
        "{} frames refused by close code {codes:?}, {} updates applied, {} updates in refused \
         frames",
        codes.values().sum::<usize>(),
        applied.len(),
        refused.len()
    );
    assert!(
        applied.len() >= 10 && refused.len() >= 10,
        "too few updates for the test to mean anything: {} applied, {} refused with garbage",
        applied.len(),
        refused.len()
    );
    // The room still works for the connection that behaved, holds every valid update and none
    // from a refused frame.
    bystander.append("t", "still here");
    let check = YClient::connect(&url).await;
    check.wait(|s| s.text("t").contains("still here")).await;
    let text = check.text("t");
    for m in &applied {
        assert!(text.contains(m.as_str()), "{m} lost");
    }
    for m in &refused {
        assert!(
            !text.contains(m.as_str()),
            "{m} from a refused frame was applied"
        );
    }
    assert!(bystander.closed().is_none());
    let (status, _) = concord_tests::http_get(&server.http_url("/healthz")).await;
    assert_eq!(status, 200);
}
