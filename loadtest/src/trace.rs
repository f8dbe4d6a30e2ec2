//! Real editing traces (gzipped JSON, e.g. `datasets/editing-traces/`) replayed by editors.
//!
//! A sequential trace is one agent whose every transaction depends on the previous one. A
//! concurrent trace has several agents; each transaction was made on the version holding exactly
//! its `parents`. Replay is faithful: each agent keeps a *replica* that merges only a
//! transaction's ancestors before applying it, so positions mean what they meant when recorded.
//! The update a replica produces is what the editor sends; ancestors made by other agents must
//! first have reached this editor over the network, so the replay follows real propagation.

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, bail};
use concord_crdt::yrs::updates::decoder::Decode;
use concord_crdt::yrs::{Doc, OffsetKind, Options, ReadTxn, Text, Transact, Update, WriteTxn};
use serde::Deserialize;

use crate::stats::UpdateKey;

/// One transaction: insertions/deletions at offsets of the version it was made on.
pub struct Txn {
    pub agent: usize,
    pub parents: Vec<usize>,
    /// `(position, delete count, inserted text)`, applied in order.
    pub patches: Vec<(u32, u32, String)>,
}

pub struct Script {
    pub name: String,
    pub txns: Vec<Txn>,
    /// For each agent, its transactions in order.
    pub by_agent: Vec<Vec<usize>>,
    pub end_content: String,
}

#[derive(Deserialize)]
struct RawTrace {
    #[serde(default)]
    kind: Option<String>,
    #[serde(rename = "endContent")]
    end_content: String,
    txns: Vec<RawTxn>,
}

#[derive(Deserialize)]
struct RawTxn {
    #[serde(default)]
    parents: Option<Vec<usize>>,
    #[serde(default)]
    agent: Option<usize>,
    patches: Vec<(u32, u32, String)>,
}

impl Script {
    /// Loads a trace file (`.json.gz` or `.json`).
    pub fn load(path: &Path) -> anyhow::Result<Script> {
        let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let json = if path.extension().is_some_and(|e| e == "gz") {
            let mut s = String::new();
            flate2::read::GzDecoder::new(raw.as_slice()).read_to_string(&mut s)?;
            s
        } else {
            String::from_utf8(raw)?
        };
        let trace: RawTrace =
            serde_json::from_str(&json).with_context(|| format!("parsing {}", path.display()))?;
        let concurrent = trace.kind.as_deref() == Some("concurrent");
        let txns: Vec<Txn> = trace
            .txns
            .into_iter()
            .enumerate()
            .map(|(i, t)| Txn {
                agent: if concurrent { t.agent.unwrap_or(0) } else { 0 },
                parents: if concurrent {
                    t.parents.unwrap_or_default()
                } else if i == 0 {
                    vec![]
                } else {
                    vec![i - 1]
                },
                patches: t.patches,
            })
            .collect();
        // Replicas merge ancestors in index order (see `Agent::next`), so a parent must come
        // before its child, as it does in the traces' format.
        if let Some((i, p)) = txns
            .iter()
            .enumerate()
            .find_map(|(i, t)| t.parents.iter().find(|&&p| p >= i).map(|&p| (i, p)))
        {
            bail!(
                "{}: transaction {i} lists {p} as a parent; parents must come before their children",
                path.display()
            );
        }
        let agents = txns.iter().map(|t| t.agent + 1).max().unwrap_or(1);
        let mut by_agent = vec![Vec::new(); agents];
        for (i, t) in txns.iter().enumerate() {
            by_agent[t.agent].push(i);
        }
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .trim_end_matches(".json.gz")
            .to_string();
        Ok(Script {
            name,
            txns,
            by_agent,
            end_content: trace.end_content,
        })
    }

    pub fn agents(&self) -> usize {
        self.by_agent.len()
    }
}

/// A document's replay: the updates produced so far, shared by its agents' editors.
pub struct Replay {
    pub script: Arc<Script>,
    produced: Vec<OnceLock<(Option<UpdateKey>, Vec<u8>)>>,
}

impl Replay {
    pub fn new(script: Arc<Script>) -> Arc<Replay> {
        let produced = (0..script.txns.len()).map(|_| OnceLock::new()).collect();
        Arc::new(Replay { script, produced })
    }

    /// Whether every transaction has been produced.
    pub fn finished(&self) -> bool {
        self.produced.last().is_none_or(|p| p.get().is_some())
    }
}

/// One agent's replica and place in its transactions.
pub struct Agent {
    pub replay: Arc<Replay>,
    pub agent: usize,
    replica: Doc,
    merged: Vec<bool>,
    next: usize,
}

/// Documents replaying traces count offsets in UTF-16 units, as JavaScript (and the traces) do.
pub fn trace_doc_options() -> Options {
    Options {
        offset_kind: OffsetKind::Utf16,
        ..Options::default()
    }
}

impl Agent {
    pub fn new(replay: Arc<Replay>, agent: usize) -> Agent {
        let n = replay.script.txns.len();
        Agent {
            replay,
            agent,
            replica: Doc::with_options(trace_doc_options()),
            merged: vec![false; n],
            next: 0,
        }
    }

    /// Produces this agent's next transaction, if its ancestors are all available: made by their
    /// agents (`produced`) and already received (`seen`). Returns its key and update.
    pub fn next(
        &mut self,
        seen: impl Fn(&UpdateKey) -> bool,
    ) -> Option<(Option<UpdateKey>, Vec<u8>)> {
        let script = self.replay.script.clone();
        let &idx = script.by_agent[self.agent].get(self.next)?;
        for &p in &script.txns[idx].parents {
            let (key, _) = self.replay.produced[p].get()?;
            if script.txns[p].agent != self.agent && key.as_ref().is_some_and(|k| !seen(k)) {
                return None;
            }
        }
        // Merge the ancestors this replica lacks, parents before children (index order): in
        // any other order yrs holds updates back as pending and retries them all on each later
        // one, which made merging a long branch take 1.1-1.3 s per replica (now about 0.1 s).
        let mut stack: Vec<usize> = script.txns[idx].parents.clone();
        let mut order = Vec::new();
        while let Some(p) = stack.pop() {
            if self.merged[p] {
                continue;
            }
            self.merged[p] = true;
            order.push(p);
            stack.extend(
                script.txns[p]
                    .parents
                    .iter()
                    .copied()
                    .filter(|q| !self.merged[*q]),
            );
        }
        order.sort_unstable();
        {
            let mut txn = self.replica.transact_mut();
            for p in order {
                let (_, bytes) = self.replay.produced[p].get()?;
                let _ = txn.apply_update(Update::decode_v1(bytes).ok()?);
            }
        }
        let client = self.replica.client_id();
        let mut txn = self.replica.transact_mut();
        let clock = txn.state_vector().get(&client);
        let text = txn.get_or_insert_text(crate::editor::TEXT);
        for (pos, del, ins) in &script.txns[idx].patches {
            let len = text.len(&txn);
            let pos = (*pos).min(len);
            if *del > 0 {
                text.remove_range(&mut txn, pos, (*del).min(len - pos));
            }
            if !ins.is_empty() {
                text.insert(&mut txn, pos, ins);
            }
        }
        let update = txn.encode_update_v1();
        let key = (txn.state_vector().get(&client) != clock).then_some((client.get(), clock));
        drop(txn);
        self.merged[idx] = true;
        self.next += 1;
        let _ = self.replay.produced[idx].set((key, update.clone()));
        Some((key, update))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_crdt::yrs::GetString;

    /// Writes `json` to a file of its own and loads it as a trace.
    fn load(json: &str) -> anyhow::Result<Script> {
        let path = std::env::temp_dir().join(format!(
            "concord-trace-{}-{}.json",
            std::process::id(),
            json.len()
        ));
        std::fs::write(&path, json)?;
        let script = Script::load(&path);
        let _ = std::fs::remove_file(&path);
        script
    }

    /// Replays every agent of `script`, each update counting as received at once (agents take
    /// turns, at most `max_rounds` of them), and returns the text all the updates make.
    fn replay_all(script: &Arc<Script>, max_rounds: usize) -> String {
        let replay = Replay::new(script.clone());
        let mut agents: Vec<Agent> = (0..script.agents())
            .map(|a| Agent::new(replay.clone(), a))
            .collect();
        let mut rounds = 0;
        while !replay.finished() {
            for agent in &mut agents {
                while agent.next(|_| true).is_some() {}
            }
            rounds += 1;
            assert!(rounds < max_rounds, "the replay made no progress");
        }
        let doc = Doc::with_options(trace_doc_options());
        {
            let mut txn = doc.transact_mut();
            for p in &replay.produced {
                let (_, bytes) = p.get().unwrap();
                txn.apply_update(Update::decode_v1(bytes).unwrap()).unwrap();
            }
        }
        let txn = doc.transact();
        txn.get_text(crate::editor::TEXT).unwrap().get_string(&txn)
    }

    /// Two agents branch from a common start (one prepends, one appends, 60 transactions
    /// each), then the first merges both branches and ends the text. The merge makes the first
    /// agent's replica take in the whole of the other branch at once, as in the real traces.
    #[test]
    fn concurrent_branches_replay_to_the_end_content() {
        let n = 60;
        let mut txns = vec![r#"{"agent":0,"parents":[],"patches":[[0,0,"hello "]]}"#.to_string()];
        let (mut last0, mut last1) = (0, 0);
        for k in 0..n {
            txns.push(format!(
                r#"{{"agent":0,"parents":[{last0}],"patches":[[0,0,"y"]]}}"#
            ));
            last0 = txns.len() - 1;
            let end = 6 + k;
            txns.push(format!(
                r#"{{"agent":1,"parents":[{last1}],"patches":[[{end},0,"x"]]}}"#
            ));
            last1 = txns.len() - 1;
        }
        let len = 6 + 2 * n;
        txns.push(format!(
            r#"{{"agent":0,"parents":[{last0},{last1}],"patches":[[{len},0,"!"]]}}"#
        ));
        let end = format!("{}hello {}!", "y".repeat(n), "x".repeat(n));
        let json = format!(
            r#"{{"kind":"concurrent","endContent":"{end}","txns":[{}]}}"#,
            txns.join(",")
        );
        let script = Arc::new(load(&json).unwrap());
        assert_eq!(replay_all(&script, 10), script.end_content);
    }

    /// The concurrent trace of the load-test measurements (docs/measurements.md) is in the repository, and its
    /// three agents replay it to the text it ends with.
    #[test]
    fn the_bundled_concurrent_trace_replays_to_its_end_content() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../datasets/editing-traces/concurrent/clownschool.json.gz");
        let script = Arc::new(Script::load(&path).unwrap());
        assert_eq!(script.agents(), 3);
        assert_eq!(script.txns.len(), 23_136);
        assert_eq!(replay_all(&script, 100_000), script.end_content);
    }

    #[test]
    fn a_parent_listed_after_its_child_is_refused() {
        let json = r#"{"kind":"concurrent","endContent":"ab","txns":[
            {"agent":0,"parents":[1],"patches":[[0,0,"a"]]},
            {"agent":1,"parents":[],"patches":[[0,0,"b"]]}]}"#;
        let err = load(json).err().expect("the trace was accepted");
        assert!(
            err.to_string()
                .contains("transaction 0 lists 1 as a parent"),
            "{err}"
        );
    }
}
