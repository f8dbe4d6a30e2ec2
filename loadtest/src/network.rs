//! The simulated network between regions: the delay proxies, run on a thread of their own.
//!
//! On the generator's runtime they would queue behind thousands of editors on the same worker
//! threads, and whatever holds one of those threads (applying a batch of updates, a trace agent
//! merging ancestors) would hold the links too. A real network is not slowed by its clients, so
//! the simulated one gets a thread (a current-thread runtime) of its own.

use std::net::SocketAddr;
use std::time::Duration;

use concord_server::delay_proxy::DelayProxy;
use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

pub struct Network {
    handle: Handle,
    proxies: Vec<DelayProxy>,
    /// Dropped with the network, which ends its thread.
    _stop: oneshot::Sender<()>,
}

impl Network {
    pub fn start() -> std::io::Result<Network> {
        let rt = Builder::new_current_thread().enable_all().build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("network".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                })
            })?;
        Ok(Network {
            handle,
            proxies: Vec::new(),
            _stop: stop,
        })
    }

    /// Starts a proxy to `target` adding `latency` each way; returns its index for
    /// [`Network::proxy`].
    pub async fn add_proxy(
        &mut self,
        target: SocketAddr,
        latency: Duration,
    ) -> anyhow::Result<usize> {
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let proxy = self
            .handle
            .spawn(DelayProxy::start(listen, target, latency))
            .await??;
        self.proxies.push(proxy);
        Ok(self.proxies.len() - 1)
    }

    pub fn proxy(&self, i: usize) -> &DelayProxy {
        &self.proxies[i]
    }
}
