//! The node's identity: `--node-id`, or an id generated on first start and kept in the data
//! dir, so a restarted node is the same node to its peers (they key their cursors by it).

use std::path::Path;

use anyhow::Context;
use concord_crdt::NodeId;
use tracing::{info, warn};

/// File in the data dir holding the generated id.
pub const NODE_ID_FILE: &str = "node-id";

pub fn load_or_create(data_dir: &Path, flag: Option<&str>) -> anyhow::Result<NodeId> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let file = data_dir.join(NODE_ID_FILE);
    let stored = std::fs::read_to_string(&file)
        .ok()
        .map(|s| s.trim().to_string());
    if let Some(flag) = flag {
        let id = NodeId::parse(flag).map_err(|e| anyhow::anyhow!("--node-id: {e}"))?;
        if stored.as_deref().is_some_and(|s| s != flag) {
            warn!(stored = ?stored, given = %id, "--node-id differs from the id this data dir had; peers will see a new node");
        }
        std::fs::write(&file, id.as_str())
            .with_context(|| format!("writing {}", file.display()))?;
        return Ok(id);
    }
    if let Some(stored) = stored {
        return NodeId::parse(&stored)
            .map_err(|e| anyhow::anyhow!("{} is corrupt: {e}", file.display()));
    }
    let id = NodeId::parse(&format!("node-{:016x}", rand::random::<u64>()))
        .expect("generated ids are valid");
    std::fs::write(&file, id.as_str()).with_context(|| format!("writing {}", file.display()))?;
    info!(node = %id, "generated a node id");
    Ok(id)
}
