//! The servers under test: either regions this tool starts itself (the real `concord` binary,
//! one process per region, meshed through delay proxies), or servers already running
//! (`--target`), which may be any y-websocket server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::network::Network;
use crate::tls::CertFiles;

/// One region as the load sees it.
pub struct Region {
    pub name: String,
    /// Base WebSocket URL; editors connect to `{ws}/{doc}`.
    pub ws: String,
    /// HTTP base URL for Concord's read API and status (`None` for foreign servers).
    pub http: Option<String>,
    /// The server process when this tool started it.
    pub pid: Option<u32>,
}

pub struct Cluster {
    pub regions: Vec<Region>,
    children: Vec<Child>,
    _network: Option<Network>,
}

pub struct SpawnOptions<'a> {
    pub regions: usize,
    pub latency: Duration,
    pub bin: &'a Path,
    pub dir: &'a Path,
    pub extra_args: &'a [String],
    /// Serve TLS with this certificate (`wss://`, and `https://` between the regions).
    pub tls: Option<&'a CertFiles>,
    /// Turn on access control with this token secret.
    pub auth_secret: Option<&'a str>,
    /// For the status calls (carries the operator token, trusts the certificate).
    pub http: &'a reqwest::Client,
}

/// The `concord` binary next to this one (both are built into the same target dir).
pub fn default_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.with_file_name("concord")
}

impl Cluster {
    /// Starts `regions` nodes meshed through proxies adding `latency` one way.
    pub async fn spawn(o: SpawnOptions<'_>) -> anyhow::Result<Cluster> {
        if !o.bin.exists() {
            bail!(
                "{} not found: build it with `cargo build --release -p concord-server` or pass --concord-bin",
                o.bin.display()
            );
        }
        let placeholder: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let (ws_scheme, http_scheme) = if o.tls.is_some() {
            ("wss", "https")
        } else {
            ("ws", "http")
        };
        // One proxy per pair: node i dials node j (i < j) through it. Links carry both directions.
        let mut network = Network::start()?;
        let mut pairs = Vec::new();
        for i in 0..o.regions {
            for j in i + 1..o.regions {
                let p = network.add_proxy(placeholder, o.latency).await?;
                pairs.push((i, j, p));
            }
        }
        let mut children = Vec::new();
        let mut regions = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..o.regions {
            let name = format!("region-{i}");
            let data = o.dir.join(&name);
            std::fs::create_dir_all(&data)?;
            let peers: Vec<String> = pairs
                .iter()
                .filter(|(a, _, _)| *a == i)
                .map(|(_, _, p)| format!("{http_scheme}://{}", network.proxy(*p).addr))
                .collect();
            let mut cmd = Command::new(o.bin);
            cmd.args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--region",
                &name,
                "--node-id",
                &name,
            ])
            .arg("--data-dir")
            .arg(&data)
            .args(["--peer-secret", "loadtest"])
            .args(o.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("CONCORD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
            if !peers.is_empty() {
                cmd.args(["--peers", &peers.join(",")]);
            }
            if let Some(tls) = o.tls {
                cmd.arg("--tls-cert").arg(&tls.cert);
                cmd.arg("--tls-key").arg(&tls.key);
                // The regions present the same self-signed certificate to each other.
                cmd.arg("--peer-ca").arg(&tls.cert);
            }
            if let Some(secret) = o.auth_secret {
                cmd.env("CONCORD_AUTH_SECRET", secret);
            }
            let mut child = cmd
                .spawn()
                .with_context(|| format!("starting {}", o.bin.display()))?;
            let addr = listening_addr(&mut child, &o.dir.join(format!("{name}.log"))).await?;
            regions.push(Region {
                name,
                ws: format!("{ws_scheme}://{addr}/ws"),
                http: Some(format!("{http_scheme}://{addr}")),
                pid: child.id(),
            });
            addrs.push(addr);
            children.push(child);
        }
        for (_, j, p) in &pairs {
            network.proxy(*p).set_target(addrs[*j]);
        }
        let cluster = Cluster {
            regions,
            children,
            _network: Some(network),
        };
        cluster.wait_meshed(o.http).await?;
        Ok(cluster)
    }

    /// Servers already running: `ws://host:port/ws`-style base URLs (or `wss://`), or
    /// `http://host:port` / `https://host:port` (Concord, whose `/ws` and read API are then used).
    pub fn targets(urls: &[String]) -> Cluster {
        let regions = urls
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let u = u.trim_end_matches('/');
                let (ws, http) = if let Some(rest) = u.strip_prefix("http://") {
                    (format!("ws://{rest}/ws"), Some(u.to_string()))
                } else if let Some(rest) = u.strip_prefix("https://") {
                    (format!("wss://{rest}/ws"), Some(u.to_string()))
                } else {
                    (u.to_string(), None)
                };
                Region {
                    name: format!("target-{i}"),
                    ws,
                    http,
                    pid: None,
                }
            })
            .collect();
        Cluster {
            regions,
            children: Vec::new(),
            _network: None,
        }
    }

    async fn wait_meshed(&self, http: &reqwest::Client) -> anyhow::Result<()> {
        let want = self.regions.len() - 1;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for r in &self.regions {
            let url = format!("{}/api/status", r.http.as_ref().unwrap());
            loop {
                let connected = match http.get(&url).send().await {
                    Ok(resp) => resp
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|s| {
                            s["peers"]
                                .as_array()
                                .map(|p| p.iter().filter(|p| p["connected"] == true).count())
                        })
                        .unwrap_or(0),
                    Err(_) => 0,
                };
                if connected >= want {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    bail!(
                        "{} linked to {connected} of {want} peers after 30 s",
                        r.name
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Stops the servers this tool started (SIGTERM, then waits).
    pub async fn stop(mut self) {
        for c in &self.children {
            if let Some(pid) = c.id() {
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
        for c in &mut self.children {
            let _ = tokio::time::timeout(Duration::from_secs(20), c.wait()).await;
        }
    }
}

/// Reads the child's log until it reports its address; the rest of the log goes to `log_file`.
async fn listening_addr(child: &mut Child, log_file: &Path) -> anyhow::Result<SocketAddr> {
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut log = tokio::fs::File::create(log_file).await?;
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            log.write_all(line.as_bytes()).await?;
            log.write_all(b"\n").await?;
            if let Some(at) = line.find("listening addr=") {
                let rest = &line[at + "listening addr=".len()..];
                return Ok::<_, anyhow::Error>(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or("")
                        .parse::<SocketAddr>()?,
                );
            }
        }
        bail!(
            "server exited before listening (see {})",
            log_file.display()
        )
    })
    .await
    .context("server did not start within 60 s")??;
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = log.write_all(line.as_bytes()).await;
            let _ = log.write_all(b"\n").await;
        }
    });
    Ok(addr)
}
