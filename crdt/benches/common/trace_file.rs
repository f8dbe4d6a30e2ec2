//! Reading a sequential editing trace (`datasets/editing-traces/sequential/*.json.gz`), shared
//! by the benchmarks of both crates (`#[path]`-included: benches cannot depend on each other).

use std::io::Read;
use std::path::Path;

/// `(position, delete count, inserted text)` of every patch, in order.
pub type Patches = Vec<(u32, u32, String)>;

/// Every patch of the trace at `path`, in order, and its final text (`endContent`).
pub fn read_sequential(path: &Path) -> Result<(Patches, String), String> {
    let raw = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut json = String::new();
    flate2::read::GzDecoder::new(raw.as_slice())
        .read_to_string(&mut json)
        .map_err(|e| format!("gunzipping {}: {e}", path.display()))?;
    let trace: serde_json::Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
    let mut patches = Vec::new();
    for txn in trace["txns"].as_array().ok_or("no txns")? {
        for p in txn["patches"].as_array().ok_or("no patches")? {
            let pos = p[0].as_u64().ok_or("bad position")? as u32;
            let del = p[1].as_u64().ok_or("bad delete count")? as u32;
            let ins = p[2].as_str().ok_or("bad insert")?.to_string();
            patches.push((pos, del, ins));
        }
    }
    let end = trace["endContent"].as_str().ok_or("no endContent")?;
    Ok((patches, end.to_string()))
}
