//! `--doc-size`: every document starts the run holding a large text, as real documents do after
//! months of editing, instead of empty.
//!
//! One document ([`concord_crdt::sample`]: words typed at random places, an item per word) is
//! generated once per run and written into every document as a client would write it: Update
//! messages over the WebSocket protocol, to the document's first editor's region. Its sections
//! are self-contained updates, so they go in as few messages as fit [`MESSAGE_BUDGET`], well
//! under the servers' message limit (Concord's `--max-message-size` is 16 MiB by default).
//! Then every region is asked, by opening the document and reading the server's Step1, until its
//! state vector covers the document's: the data has arrived (directly or replicated) before the
//! editors connect and before the memory it takes is measured.

use std::time::{Duration, Instant};

use concord_crdt::yrs::updates::decoder::Decode;
use concord_crdt::yrs::{StateVector, Update};
use concord_crdt::{ClientMessage, decode_frame, encode};
use futures_util::{SinkExt, StreamExt, stream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::cluster::Cluster;
use crate::dial::Dialer;

/// Largest Update message the pre-fill sends (sections are grouped up to it).
pub const MESSAGE_BUDGET: usize = 4 << 20;

/// Documents pre-filled at once.
const CONCURRENCY: usize = 8;

/// The seed of the run's document: every run pre-fills the same text.
const SEED: u64 = 17;

/// Longest wait for one region to hold one document.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(120);

/// The document every document is pre-filled with.
pub struct Content {
    /// Update messages' payloads (v1 updates), in the order sent.
    pub messages: Vec<Vec<u8>>,
    /// What a replica holding the document has seen at least.
    pub state_vector: StateVector,
    /// Bytes of text, and of its v1 encoding (the messages together).
    pub text_bytes: usize,
    pub update_bytes: usize,
    /// How long generating it took.
    pub generated_in: Duration,
}

/// Generates the document (in the blocking pool: 500 KB takes seconds).
pub async fn generate(root: &'static str, size: usize) -> anyhow::Result<Content> {
    tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        let sections = concord_crdt::sample::typed_sections(root, size, SEED);
        let mut state_vector = StateVector::default();
        for s in &sections {
            state_vector.merge(Update::decode_v1(s)?.state_vector());
        }
        let messages = group(sections, MESSAGE_BUDGET)?;
        Ok(Content {
            update_bytes: messages.iter().map(Vec::len).sum(),
            text_bytes: size,
            messages,
            state_vector,
            generated_in: t0.elapsed(),
        })
    })
    .await?
}

/// Merges consecutive updates into groups of at most `budget` bytes (an update larger than the
/// budget alone goes as it is).
fn group(updates: Vec<Vec<u8>>, budget: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut bytes = 0;
    let flush = |batch: &mut Vec<Vec<u8>>, out: &mut Vec<Vec<u8>>| -> anyhow::Result<()> {
        match batch.len() {
            0 => {}
            1 => out.push(batch.pop().unwrap()),
            _ => out.push(concord_crdt::yrs::merge_updates_v1(std::mem::take(batch))?),
        }
        Ok(())
    };
    for u in updates {
        if bytes + u.len() > budget && !batch.is_empty() {
            flush(&mut batch, &mut out)?;
            bytes = 0;
        }
        bytes += u.len();
        batch.push(u);
    }
    flush(&mut batch, &mut out)?;
    Ok(out)
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(256 << 20))
}

/// One document to fill: its URL in each region (with the run's token), and the region its
/// content is written to.
pub struct Target {
    pub urls: Vec<String>,
    pub home: usize,
}

/// Writes `content` into every target and waits until every region holds it, printing a line
/// every `progress_every` documents (0: none).
pub async fn fill(
    targets: Vec<Target>,
    content: &Content,
    dialer: &Dialer,
    progress_every: usize,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let total = targets.len();
    let mut done = 0;
    let mut results = stream::iter(targets)
        .map(|t| fill_one(t, content, dialer))
        .buffer_unordered(CONCURRENCY);
    while let Some(r) = results.next().await {
        r?;
        done += 1;
        if progress_every > 0 && (done % progress_every == 0 || done == total) {
            eprintln!(
                "  pre-filled {done} of {total} documents ({:.1} s)",
                t0.elapsed().as_secs_f64()
            );
        }
    }
    Ok(t0.elapsed())
}

async fn fill_one(t: Target, content: &Content, dialer: &Dialer) -> anyhow::Result<()> {
    let home = &t.urls[t.home];
    let mut ws = dialer
        .connect(home, ws_config())
        .await
        .map_err(|e| anyhow::anyhow!("pre-fill {home}: {e}"))?;
    for m in &content.messages {
        ws.send(Message::Binary(encode::update(m).into()))
            .await
            .map_err(|e| anyhow::anyhow!("pre-fill {home}: {e}"))?;
    }
    // Stays open until every region holds the document: closing right away could leave the
    // last message unread by a server that sees the close first.
    for url in &t.urls {
        wait_arrived(url, &content.state_vector, dialer).await?;
    }
    let _ = ws.close(None).await;
    // The server's close frame, so the connection is gone on its side too.
    while let Some(Ok(_)) = ws.next().await {}
    Ok(())
}

/// Opens `url` until the Step1 the server sends on connect covers `want`.
async fn wait_arrived(url: &str, want: &StateVector, dialer: &Dialer) -> anyhow::Result<()> {
    let deadline = Instant::now() + ARRIVAL_TIMEOUT;
    loop {
        let mut ws = dialer
            .connect(url, ws_config())
            .await
            .map_err(|e| anyhow::anyhow!("pre-fill check {url}: {e}"))?;
        let mut held = None;
        while held.is_none() {
            match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), ws.next()).await
            {
                Ok(Some(Ok(Message::Binary(frame)))) => {
                    held = decode_frame(&frame)
                        .ok()
                        .into_iter()
                        .flatten()
                        .find_map(|m| match m {
                            ClientMessage::SyncStep1(sv) => Some(sv),
                            _ => None,
                        });
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => anyhow::bail!("pre-fill check {url}: {e}"),
                Ok(None) => anyhow::bail!("pre-fill check {url}: closed before its Step1"),
                Err(_) => anyhow::bail!("pre-fill check {url}: no Step1 within the timeout"),
            }
        }
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
        if covers(&held.unwrap(), want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{url} did not receive the pre-filled document within {} s",
                ARRIVAL_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn covers(held: &StateVector, want: &StateVector) -> bool {
    want.iter()
        .all(|(client, clock)| held.get(client) >= *clock)
}

/// Each document's targets: its URL in every region, written to the region of its first editor.
pub fn targets(
    cluster: &Cluster,
    urls: impl Fn(usize, &str) -> String,
    docs: usize,
) -> Vec<Target> {
    (0..docs)
        .map(|d| Target {
            urls: cluster.regions.iter().map(|r| urls(d, &r.ws)).collect(),
            home: d % cluster.regions.len(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_stay_under_the_budget_and_keep_everything() {
        let sections = concord_crdt::sample::typed_sections("t", 40_000, 1);
        let sizes: Vec<usize> = sections.iter().map(Vec::len).collect();
        let budget = sizes.iter().max().unwrap() * 3;
        let groups = group(sections.clone(), budget).unwrap();
        assert!(groups.len() > 1 && groups.len() < sections.len());
        assert!(groups.iter().all(|g| g.len() <= budget));
        let sv = |updates: &[Vec<u8>]| {
            let mut sv = StateVector::default();
            for u in updates {
                sv.merge(Update::decode_v1(u).unwrap().state_vector());
            }
            sv
        };
        assert_eq!(sv(&groups), sv(&sections));
        // A budget below one section: each goes alone.
        assert_eq!(group(sections.clone(), 1).unwrap(), sections);
    }
}
