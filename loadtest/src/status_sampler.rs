//! Reads every region's `/api/status` at each whole second of the generator's clock from the
//! start of the measured window, so that [`crate::replication_cost`] can difference the servers'
//! counters over exactly the seconds the latency summary covers (its buckets are whole seconds
//! of the same clock). Only the first reading and the latest are kept.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One status per region, `None` where it could not be read.
pub type Statuses = Vec<Option<Value>>;

/// A reading: the whole second (since the clock's origin) it was taken at, and the statuses.
type Reading = Option<(u64, Arc<Statuses>)>;

pub struct StatusSampler {
    from: u64,
    first: watch::Receiver<Reading>,
    latest: watch::Receiver<Reading>,
    task: JoinHandle<()>,
}

/// How long one status call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

impl StatusSampler {
    /// Starts reading `urls` (`{http}` base URLs) at `origin + from` seconds, then every second.
    pub fn start(http: reqwest::Client, urls: Vec<String>, origin: Instant, from: u64) -> Self {
        let (first_tx, first) = watch::channel(None);
        let (latest_tx, latest) = watch::channel(None);
        let task = tokio::spawn(async move {
            let mut second = from;
            loop {
                tokio::time::sleep_until((origin + Duration::from_secs(second)).into()).await;
                let reading = Some((second, Arc::new(read_all(&http, &urls).await)));
                if second == from {
                    first_tx.send_replace(reading.clone());
                }
                latest_tx.send_replace(reading);
                second += 1;
            }
        });
        StatusSampler {
            from,
            first,
            latest,
            task,
        }
    }

    /// The readings at the window's first second and at `to` (or the first one after it, if a
    /// slow reading skipped it), waiting at most a few seconds for the latter. `None` when the
    /// window is empty or a reading is missing.
    pub async fn window(mut self, to: u64) -> Option<(Arc<Statuses>, Arc<Statuses>)> {
        if to <= self.from {
            return None;
        }
        let end = tokio::time::timeout(
            CALL_TIMEOUT * 2,
            self.latest
                .wait_for(|r| r.as_ref().is_some_and(|(s, _)| *s >= to)),
        )
        .await
        .ok()
        .and_then(|r| r.ok().and_then(|r| r.clone()));
        let (_, start) = self.first.borrow().clone()?;
        Some((start, end?.1))
    }
}

impl Drop for StatusSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_all(http: &reqwest::Client, urls: &[String]) -> Statuses {
    futures_util::future::join_all(urls.iter().map(|u| read(http, u))).await
}

async fn read(http: &reqwest::Client, base: &str) -> Option<Value> {
    let resp = http
        .get(format!("{base}/api/status"))
        .timeout(CALL_TIMEOUT)
        .send()
        .await
        .ok()?;
    resp.error_for_status().ok()?.json().await.ok()
}
