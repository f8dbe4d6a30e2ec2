//! Command line and environment: one struct per command, every flag also an env var
//! `CONCORD_<FLAG>` (clap's `env`), so containers and shells configure the server the same way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::auth::AuthArgs;
use crate::store::Durability;

/// `--doc-mode`: [`concord_crdt::DocMode`] as a command-line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DocModeArg {
    Encoded,
    Live,
}

impl From<DocModeArg> for concord_crdt::DocMode {
    fn from(mode: DocModeArg) -> Self {
        match mode {
            DocModeArg::Encoded => concord_crdt::DocMode::Encoded,
            DocModeArg::Live => concord_crdt::DocMode::Live,
        }
    }
}

/// Concord: a Yjs WebSocket server (y-websocket protocol) with durable storage.
///
/// Without a subcommand, `concord` runs `serve`.
#[derive(Debug, Parser)]
#[command(name = "concord", version, about, long_about = None, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at startup
pub enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Start three regions on localhost, meshed through links with simulated latency, and print
    /// their URLs: the multi-region demo in one command.
    Demo(DemoArgs),
    /// Forget a peer that is gone for good. The update log keeps every entry a known peer has not
    /// acknowledged, so a decommissioned peer would make it grow forever. If the peer ever comes
    /// back it is treated as new: it gets every document's snapshot, then the log. Works while
    /// the server runs: within a few seconds it drops the peer from its status and metrics.
    ForgetPeer(ForgetPeerArgs),
    /// Mint a client token (HS256 JWT) from the shared --auth-secret and print it, for scripts
    /// and tests. Apps mint their own with any JWT library (see docs/access-control.md).
    Token(TokenArgs),
    /// Show a node and its peers (link, lag, backlog, last contact, last error) from its
    /// /api/status. Exit status: 0 when every peer is linked, 1 when one is down, 2 when the
    /// status could not be read.
    Status(crate::status_cli::StatusArgs),
    /// Print the configuration `concord serve` would run with, given the same flags, env vars and
    /// --config file: one `name = value  # source` line per setting, secrets redacted. The output
    /// is a valid config file.
    Config(ConfigArgs),
    #[command(flatten)]
    Backup(crate::backup::BackupCommand),
}

/// `concord config`: every flag of `concord serve`.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The secret the servers verify with (`--auth-secret`).
    #[arg(
        long,
        env = "CONCORD_AUTH_SECRET",
        hide_env_values = true,
        required_unless_present = "auth_secret_file"
    )]
    pub auth_secret: Option<String>,

    /// Read the secret from this file instead (one trailing newline is ignored).
    #[arg(long, env = "CONCORD_AUTH_SECRET_FILE", conflicts_with = "auth_secret")]
    pub auth_secret_file: Option<PathBuf>,

    /// `PATTERN=read` or `PATTERN=write`, repeatable. A pattern is a document name or a prefix
    /// ending in `*` (`'*'` is every document); the most specific match wins.
    #[arg(long = "doc", value_parser = doc_grant)]
    pub docs: Vec<(String, crate::auth::Access)>,

    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub expires: Duration,

    /// Who the token is for (shown in the server's logs).
    #[arg(long)]
    pub sub: Option<String>,

    /// Grant the operator endpoints (`/api/status`, ...).
    #[arg(long)]
    pub admin: bool,
}

fn doc_grant(s: &str) -> Result<(String, crate::auth::Access), String> {
    use crate::auth::Access;
    let (pattern, access) = s
        .rsplit_once('=')
        .ok_or("expected PATTERN=read or PATTERN=write")?;
    let access = match access {
        "read" => Access::Read,
        "write" => Access::Write,
        "none" => Access::None,
        other => return Err(format!("access must be read, write or none, not {other:?}")),
    };
    Ok((pattern.to_string(), access))
}

#[derive(Debug, Clone, Args)]
pub struct ForgetPeerArgs {
    /// The peer's node id (as `/api/status` shows it).
    pub node_id: String,

    /// The data directory of the node that should forget it.
    #[arg(long, env = "CONCORD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

/// Everything `concord serve` accepts.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Read settings from this TOML file: its keys are these flags' long names (see
    /// concord.example.toml). A flag or env var beats the file, which beats the default.
    #[arg(long, env = "CONCORD_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log lines as `text`, or as `json`: one object per line with `ts`, `level`, `target`,
    /// `msg` and the event's fields (`doc`, `peer`, `region`, ...), for Loki or Elasticsearch.
    /// RUST_LOG filters either.
    #[arg(long, env = "CONCORD_LOG_FORMAT", value_enum, default_value_t = crate::log_format::LogFormat::Text)]
    pub log_format: crate::log_format::LogFormat,

    /// Address to listen on for HTTP and WebSocket connections.
    #[arg(long, env = "CONCORD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory holding the server's data (created if missing).
    #[arg(long, env = "CONCORD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Largest WebSocket message accepted from a client, in bytes. A larger one closes that
    /// connection with code 1009 (clients would otherwise resend it forever).
    #[arg(long, env = "CONCORD_MAX_MESSAGE_SIZE", default_value_t = 16 * 1024 * 1024)]
    pub max_message_size: usize,

    /// Longest accepted document name, in bytes of UTF-8 (at most 512). A longer one is answered
    /// 400 before the WebSocket upgrade.
    #[arg(long, env = "CONCORD_MAX_DOC_NAME", default_value_t = concord_crdt::name::MAX_DOC_NAME_BYTES,
          value_parser = doc_name_limit)]
    pub max_doc_name: usize,

    /// How long a document stays in memory after its last connection leaves.
    #[arg(long, env = "CONCORD_EVICT_AFTER", default_value = "30s", value_parser = humantime::parse_duration)]
    pub evict_after: Duration,

    /// Interval between WebSocket pings. A connection that answers nothing for two intervals is
    /// closed as dead; a connection that was sent no data for half an interval gets an empty
    /// awareness update, because Yjs clients drop sockets that carry no data for 30 s.
    #[arg(long, env = "CONCORD_PING_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// Messages queued for one client before it counts as too slow and is disconnected (it
    /// resyncs when it reconnects). Keeps one slow client from stalling its room.
    #[arg(long, env = "CONCORD_SEND_QUEUE", default_value_t = 512)]
    pub send_queue: usize,

    /// Messages queued for one document's owner task before senders wait (backpressure).
    #[arg(long, env = "CONCORD_DOC_QUEUE", default_value_t = 1024)]
    pub doc_queue: usize,

    /// How a live document is held in memory. `encoded`: as its encoded updates and the ids they
    /// insert and delete; a 500 KB text costs about 2 MB instead of about 30 MB, updates are
    /// judged faster, and merging them runs off the room's thread. `live`: a yrs Doc, which
    /// answers a client that reconnects far behind faster (about 1 ms instead of about 20 ms for
    /// that document). See docs/design.md.
    #[arg(long, env = "CONCORD_DOC_MODE", value_enum, default_value_t = DocModeArg::Encoded)]
    pub doc_mode: DocModeArg,

    /// `sync`: an update is committed to disk (fsync) before it is relayed to anyone, so nothing
    /// relayed is ever lost. `async`: relayed first, committed with the writer's next transaction;
    /// a crash can lose what was relayed but not yet committed: --commit-delay plus the fsync,
    /// plus any write in progress (compacting a large document, a few ms per MB), in exchange
    /// for lower latency.
    #[arg(long, env = "CONCORD_DURABILITY", value_enum, default_value_t = Durability::Sync)]
    pub durability: Durability,

    /// With --durability async: how long the writer gathers updates into one commit (the loss
    /// window is this, plus the fsync, plus any write in progress; see docs/durability.md).
    #[arg(long, env = "CONCORD_COMMIT_DELAY", default_value = "2ms", value_parser = humantime::parse_duration)]
    pub commit_delay: Duration,

    /// Compact a document (replace its log entries by one snapshot) once it has this many log
    /// entries since its last snapshot, weighing at least half the snapshot (so compaction's cost
    /// stays proportional to what is written)...
    #[arg(long, env = "CONCORD_COMPACT_AFTER_UPDATES", default_value_t = 1000)]
    pub compact_after_updates: u64,

    /// ...or this many bytes of them.
    #[arg(long, env = "CONCORD_COMPACT_AFTER_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub compact_after_bytes: u64,

    /// Refuse writes once the database file reaches this many bytes (0: no limit). Writes then
    /// fail like on a full disk: the affected connections are closed with 1011, nothing is lost.
    #[arg(long, env = "CONCORD_MAX_DB_SIZE", default_value_t = 0)]
    pub max_db_size: u64,

    /// Name of this node's region, shown in status and to peers.
    #[arg(long, env = "CONCORD_REGION", default_value = "local")]
    pub region: String,

    /// This node's id (letters, digits, '.', '_', '-'). Default: generated on first start and
    /// kept in the data dir (`node-id`). Peers key their replication cursors by it.
    #[arg(long, env = "CONCORD_NODE_ID")]
    pub node_id: Option<String>,

    /// Base URLs of peer nodes to replicate with, comma-separated (`http://10.0.0.2:8080`).
    /// The peer graph is the topology: every node listing every other is a mesh, spokes listing
    /// a hub is a star, each node listing its successor is a ring.
    #[arg(long, env = "CONCORD_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,

    /// Shared secret that peer links prove with a challenge/response (HMAC-SHA256); it is never
    /// sent. Required with --peers; without it this node also refuses incoming peer links.
    #[arg(long, env = "CONCORD_PEER_SECRET", hide_env_values = true)]
    pub peer_secret: Option<String>,

    /// Read --peer-secret from this file instead, so it stays out of `ps` and shell history (one
    /// trailing newline is ignored).
    #[arg(long, env = "CONCORD_PEER_SECRET_FILE", conflicts_with = "peer_secret")]
    pub peer_secret_file: Option<PathBuf>,

    /// The URL clients and peers reach this node at, shown in status (default: http://LISTEN,
    /// or https://LISTEN with --tls-cert).
    #[arg(long, env = "CONCORD_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Also serve `GET /metrics` (Prometheus) on this address, plain HTTP and without any
    /// authentication, for a scraper inside the network (`/metrics` on --listen needs an admin
    /// token when auth is on).
    #[arg(long, env = "CONCORD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub limits: LimitArgs,
}

/// TLS for clients (`--listen`) and for peer links.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// Certificate chain (PEM) to serve HTTPS and WSS with. SIGHUP reloads it and the key.
    #[arg(long, env = "CONCORD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) for --tls-cert.
    #[arg(long, env = "CONCORD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Extra CA certificate(s) (PEM) trusted for `https://` peers, besides the system roots
    /// (for a private CA).
    #[arg(long, env = "CONCORD_PEER_CA")]
    pub peer_ca: Option<PathBuf>,

    /// Refuse plain `ws://` peer links, dialed and accepted alike.
    #[arg(long, env = "CONCORD_PEER_TLS_REQUIRED")]
    pub peer_tls_required: bool,
}

/// Limits against abuse.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Open client connections at most; over it, new upgrades are answered 503 (0: no limit).
    #[arg(long, env = "CONCORD_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Open client connections per client IP address at most (0: no limit). Behind a reverse
    /// proxy every client shares the proxy's address: leave it off there.
    #[arg(long, env = "CONCORD_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Live documents at most (0: no limit). Over it, a client opening a document that is not
    /// live gets 503 before the upgrade, and so does an HTTP read of one; live documents are
    /// joined and read whatever the count. Peers' replicated updates are never refused (they
    /// may take the count over the limit).
    #[arg(long, env = "CONCORD_MAX_LIVE_DOCS", default_value_t = 100_000)]
    pub max_live_docs: usize,

    /// How long a new TCP connection may take to send its request headers (and, with TLS, to
    /// finish the TLS handshake) before it is cut: slowloris protection.
    #[arg(long, env = "CONCORD_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub handshake_timeout: Duration,

    /// Connections accepted but not yet upgraded to a WebSocket (TLS handshakes, HTTP requests
    /// in progress or kept alive), at most. Past it a new socket is closed at once: silent or
    /// slow sockets cannot take every file descriptor.
    #[arg(long, env = "CONCORD_MAX_PENDING_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_connections: u32,
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be more than 0".into()),
        Err(e) => Err(e.to_string()),
    }
}

impl Default for LimitArgs {
    fn default() -> Self {
        LimitArgs {
            max_connections: 10_000,
            max_connections_per_ip: 0,
            max_live_docs: 100_000,
            handshake_timeout: Duration::from_secs(10),
            max_pending_connections: 1024,
        }
    }
}

impl ServeArgs {
    /// Reads the flags and env vars of `concord serve` alone (tests and embedders).
    pub fn parse_from<I, T>(args: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            serve: ServeArgs,
        }
        Only::parse_from(args).serve
    }
}

fn doc_name_limit(s: &str) -> Result<usize, String> {
    let max = concord_crdt::name::MAX_DOC_NAME_BYTES;
    match s.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("must be a number from 1 to {max}")),
    }
}

/// `concord demo`: regions on localhost behind delay proxies (see [`crate::demo`]).
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// One-way latency added between regions.
    #[arg(long, env = "CONCORD_DEMO_LATENCY", default_value = "80ms", value_parser = humantime::parse_duration)]
    pub latency: Duration,

    /// Address of the first region; the others listen on the next ports (port 0: any free ports).
    #[arg(long, env = "CONCORD_DEMO_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,

    /// Directory for the regions' data (one subdirectory each).
    #[arg(long, env = "CONCORD_DEMO_DATA_DIR", default_value = "./data/demo")]
    pub data_dir: PathBuf,

    /// Region names, comma-separated.
    #[arg(
        long,
        env = "CONCORD_DEMO_REGIONS",
        value_delimiter = ',',
        default_value = "eu,us,ap"
    )]
    pub regions: Vec<String>,
}
