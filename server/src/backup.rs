//! `concord backup` and `concord restore`, the operator's side of recovering a region: the
//! commands' arguments, the node ids, and what they print. The database work (a consistent copy
//! of the live file, the checks, the reset of replication positions) is
//! [`crate::store::sqlite::backup`]'s.
//!
//! A restored node never keeps its old node id. Its peers moved their cursors for that id past
//! entries the backup does not hold, so under it they would never send them; under a new id they
//! know nothing of it and send it everything. `restore` therefore writes a new `node-id` to the
//! data dir and tells the operator to make the peers forget the old one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use concord_crdt::NodeId;

use crate::node_id::NODE_ID_FILE;
use crate::store::sqlite::DB_FILE;
use crate::store::sqlite::backup::{self as db, BackupInfo};

/// `concord backup` and `concord restore` (flattened into the top-level commands).
#[derive(Debug, Clone, Subcommand)]
pub enum BackupCommand {
    /// Copy the database of a node, running or not, to a new file: one consistent state, taken
    /// while the server goes on serving and writing (`VACUUM INTO` from a read-only connection).
    /// The file is written as OUT.tmp, synced, then renamed, so OUT is always complete.
    Backup(BackupArgs),
    /// Prepare a new data directory from a backup, under a NEW node id (never the old one: its
    /// peers believe the old id holds entries the backup lacks). Then run `concord forget-peer
    /// OLD_ID` on each peer.
    Restore(RestoreArgs),
}

#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// The data directory of the node to back up (it may be running).
    #[arg(long, env = "CONCORD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// The backup file to write. It must not exist.
    pub out: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The backup file (`concord backup`'s output).
    pub backup: PathBuf,

    /// The data directory to create. It must not hold a database or a node id already.
    #[arg(long, env = "CONCORD_DATA_DIR")]
    pub data_dir: PathBuf,

    /// The restored node's id (default: a new random one). Must differ from the backup's.
    #[arg(long)]
    pub node_id: Option<String>,
}

pub fn run(command: BackupCommand) -> anyhow::Result<()> {
    match command {
        BackupCommand::Backup(args) => backup(&args),
        BackupCommand::Restore(args) => restore(&args),
    }
}

fn backup(args: &BackupArgs) -> anyhow::Result<()> {
    let node_id = std::fs::read_to_string(args.data_dir.join(NODE_ID_FILE))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let source_bytes = file_len(&args.data_dir.join(DB_FILE))
        + file_len(&args.data_dir.join(format!("{DB_FILE}-wal")));
    let started = Instant::now();
    let tmp = db::temp_path(&args.out);
    let done = AtomicBool::new(false);
    let info = std::thread::scope(|s| {
        s.spawn(|| report_progress(&tmp, source_bytes, &done));
        let result = db::backup(&args.data_dir, &args.out, node_id.as_deref(), now_ms());
        done.store(true, Ordering::Release);
        result
    })?;
    let bytes = file_len(&args.out);
    println!(
        "backup of node {} written to {}: {} ({} documents, {} log entries), committed seq {}, in {:.1} s",
        node_id.as_deref().unwrap_or("(unknown: no node-id file)"),
        args.out.display(),
        megabytes(bytes),
        info.documents,
        info.log_entries,
        info.committed,
        started.elapsed().as_secs_f64(),
    );
    Ok(())
}

/// Every second of a backup, tells how far the copy is (on stderr, so stdout is the summary).
fn report_progress(tmp: &Path, source_bytes: u64, done: &AtomicBool) {
    let started = Instant::now();
    let mut next = Duration::from_secs(1);
    while !done.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50));
        if started.elapsed() >= next {
            next += Duration::from_secs(1);
            let _ = writeln!(
                std::io::stderr(),
                "copying: {} written of about {}",
                megabytes(file_len(tmp)),
                megabytes(source_bytes)
            );
        }
    }
}

fn restore(args: &RestoreArgs) -> anyhow::Result<()> {
    let new_id = match &args.node_id {
        Some(id) => Some(NodeId::parse(id).map_err(|e| anyhow::anyhow!("--node-id: {e}"))?),
        None => None,
    };
    // Everything is checked before anything is written.
    let plan = db::plan_restore(&args.backup, &args.data_dir)?;
    let new_id = choose_id(new_id, &plan.info)?;
    let restored = plan.info.clone();
    plan.apply()?;
    let old = restored.node_id.as_deref();
    // The node refuses to start under the old id (--node-id, the env var or a config file
    // could still name it): see node_id::RETIRED_FILE.
    if let Some(old) = old {
        write_synced(
            &args.data_dir,
            crate::node_id::RETIRED_FILE,
            &format!("{old}\n"),
        )?;
    }
    write_node_id(&args.data_dir, &new_id)?;
    println!(
        "restored {} into {}: {} documents, {} log entries, committed seq {}{}",
        args.backup.display(),
        args.data_dir.display(),
        restored.documents,
        restored.log_entries,
        restored.committed,
        old.map(|o| format!(", backup of node {o}"))
            .unwrap_or_default(),
    );
    println!("new node id: {new_id}");
    println!(
        "Start the node on {} with its usual flags (region, peers, secrets) but without \
         --node-id, CONCORD_NODE_ID or a config file's node-id set to the old id (it refuses to \
         start under it): its peers will send it every document.",
        args.data_dir.display()
    );
    match old {
        Some(old) => println!(
            "Then, on each of its peers, run: concord forget-peer {old} --data-dir <that peer's data dir>\n\
             (the peers otherwise keep the log entries the old id never acknowledged, forever)."
        ),
        None => println!(
            "The backup does not name its node. On each of its peers, run `concord forget-peer \
             OLD_ID --data-dir <that peer's data dir>` with the old node's id (shown in the peers' \
             /api/status), or the peers keep the log entries it never acknowledged, forever."
        ),
    }
    Ok(())
}

/// The restored node's id: the one asked for, or a new random one; never the backup's.
fn choose_id(asked: Option<NodeId>, info: &BackupInfo) -> anyhow::Result<NodeId> {
    let old = info.node_id.as_deref();
    if let Some(id) = asked {
        if Some(id.as_str()) == old {
            anyhow::bail!(
                "--node-id {id} is the backed-up node's own id; a restored node needs a new one \
                 (its peers believe that id holds entries the backup lacks)"
            );
        }
        return Ok(id);
    }
    loop {
        let id = NodeId::parse(&format!("node-{:016x}", rand::random::<u64>()))
            .expect("generated ids are valid");
        if Some(id.as_str()) != old {
            return Ok(id);
        }
    }
}

/// Writes the node id file durably (temporary file, sync, rename, sync the directory).
fn write_node_id(dir: &Path, id: &NodeId) -> anyhow::Result<()> {
    write_synced(dir, NODE_ID_FILE, id.as_str())
}

/// Writes `name` in `dir` through a temporary file, synced, then renamed.
fn write_synced(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let file = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &file)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().with_context(|| format!("writing {}", file.display()))
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
