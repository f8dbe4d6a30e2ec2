//! The node's identity: `--node-id`, or an id generated on first start and kept in the data
//! dir, so a restarted node is the same node to its peers (they key their cursors by it).

use std::path::Path;

use anyhow::Context;
use concord_crdt::NodeId;
use tracing::{info, warn};

/// File in the data dir holding the generated id.
pub const NODE_ID_FILE: &str = "node-id";

/// File in the data dir naming ids this data dir must never serve under again, one per line:
/// `concord restore` writes the backed-up node's id there. Its peers believe that id holds
/// entries the backup lacks, so a node serving under it would miss them forever.
pub const RETIRED_FILE: &str = "retired-node-ids";

/// The ids in `data_dir`'s [`RETIRED_FILE`] (none if there is no such file).
pub fn retired(data_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(data_dir.join(RETIRED_FILE))
        .map(|text| {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn refuse_retired(data_dir: &Path, id: &NodeId) -> anyhow::Result<()> {
    if retired(data_dir).iter().any(|r| r == id.as_str()) {
        anyhow::bail!(
            "node id {id} is retired in {}: this data dir was restored from a backup of that node, \
             and its peers believe that id holds entries the backup lacks, so serving under it \
             would miss them forever. Remove --node-id (or CONCORD_NODE_ID, or `node-id` in the \
             config file) to use the id `concord restore` gave it",
            data_dir.display()
        );
    }
    Ok(())
}

pub fn load_or_create(data_dir: &Path, flag: Option<&str>) -> anyhow::Result<NodeId> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let file = data_dir.join(NODE_ID_FILE);
    let stored = std::fs::read_to_string(&file)
        .ok()
        .map(|s| s.trim().to_string());
    if let Some(flag) = flag {
        let id = NodeId::parse(flag).map_err(|e| anyhow::anyhow!("--node-id: {e}"))?;
        refuse_retired(data_dir, &id)?;
        if stored.as_deref().is_some_and(|s| s != flag) {
            warn!(stored = ?stored, given = %id, "--node-id differs from the id this data dir had; peers will see a new node");
        }
        std::fs::write(&file, id.as_str())
            .with_context(|| format!("writing {}", file.display()))?;
        return Ok(id);
    }
    if let Some(stored) = stored {
        let id = NodeId::parse(&stored)
            .map_err(|e| anyhow::anyhow!("{} is corrupt: {e}", file.display()))?;
        refuse_retired(data_dir, &id)?;
        return Ok(id);
    }
    let id = NodeId::parse(&format!("node-{:016x}", rand::random::<u64>()))
        .expect("generated ids are valid");
    std::fs::write(&file, id.as_str()).with_context(|| format!("writing {}", file.display()))?;
    info!(node = %id, "generated a node id");
    Ok(id)
}
