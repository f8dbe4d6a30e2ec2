//! One node, wired together and run: opens the store, starts replication and the registry,
//! serves until the shutdown signal, then stops in one documented order with every wait bounded
//! ([`serve_on`]). Also the span each node's log lines carry, and the check that refuses to
//! serve an unauthenticated node off loopback.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, warn};

use crate::app::App;
use crate::config::ServeArgs;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::replication::Replication;
use crate::replication::auth::Identity;
use crate::store::SharedStore;
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::{auth, http, internal, limits, listen, memory, node_id, room, status, tls};

/// How long shutdown waits for connections to say goodbye before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long shutdown waits for rooms to finish the writes they have in flight. A room stops
/// taking messages at the shutdown signal, so this is one group commit (milliseconds), or a
/// compaction of the largest document (tens of milliseconds per MB); past it the store closes
/// anyway, and what those rooms still write fails (their clients resend it on reconnect).
const ROOM_GRACE: Duration = Duration::from_secs(30);

/// Binds `config.listen` and serves until `stop` completes.
pub async fn serve(
    config: ServeArgs,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // SIGHUP reloads certificates; until its handler is up it must not kill the process (its
    // default), so take it over before the port opens.
    #[cfg(unix)]
    let _hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let listener = TcpListener::bind(config.listen).await?;
    serve_on(listener, config, stop).await
}

/// Serves on an already bound listener (tests bind port 0 and read the address first).
pub async fn serve_on(
    listener: TcpListener,
    config: ServeArgs,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let span = node_span(&config.region);
    serve_node(listener, config, stop).instrument(span).await
}

/// The span every log line of a node carries (`node{region=eu}`), so the regions of
/// `concord demo`, which share one process, can be told apart. Tasks the node spawns enter it
/// too (`in_current_span`). Error level, so a filter as strict as `warn` still keeps the region.
pub fn node_span(region: &str) -> tracing::Span {
    tracing::error_span!("node", region = %region)
}

async fn serve_node(
    listener: TcpListener,
    config: ServeArgs,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if !config.peers.is_empty() && config.peer_secret.is_none() {
        anyhow::bail!("--peers needs --peer-secret: peer links must authenticate");
    }
    let peer_tls = tls::peer::PeerTls::from_config(&config.tls, &config.peers)?;
    let certs = match (&config.tls.tls_cert, &config.tls.tls_key) {
        (Some(cert), Some(key)) => Some(tls::server::CertStore::load(cert, key)?),
        _ => None,
    };
    let addr = listener.local_addr()?;
    let gate = auth::Gate::new(&config.auth)?;
    check_exposure(&config, addr, &gate)?;
    let node_id = node_id::load_or_create(&config.data_dir, config.node_id.as_deref())?;
    let shutdown = CancellationToken::new();
    let acceptor = match &certs {
        Some(certs) => {
            tls::server::reload_on_sighup(certs.clone(), shutdown.clone());
            Some(tls::server::acceptor(certs.clone())?)
        }
        None => {
            tls::server::ignore_sighup(shutdown.clone());
            if config.tls.peer_tls_required {
                warn!(
                    "--peer-tls-required without --tls-cert: every incoming peer link will be \
                     refused (this node serves no TLS)"
                );
            }
            None
        }
    };
    let metrics = Arc::new(Metrics::new(&config.region));
    let store: SharedStore = Arc::new(SqliteStore::open(
        &config.data_dir,
        SqliteOptions {
            durability: config.durability,
            commit_delay: config.commit_delay,
            max_db_bytes: config.max_db_size,
            metrics: metrics.store.clone(),
            ..SqliteOptions::default()
        },
    )?);
    let me = Identity {
        node_id,
        region: config.region.clone(),
        url: config.public_url.clone().unwrap_or_else(|| match certs {
            Some(_) => format!("https://{addr}"),
            None => format!("http://{addr}"),
        }),
    };
    let replication = Replication::new(
        me,
        config.peer_secret.clone(),
        config.peers.clone(),
        peer_tls,
        store.clone(),
        shutdown.child_token(),
    );
    replication.recall_peers().await;
    // The scrape reads the peers and the store through a weak handle: the metrics outlive
    // neither, and keep neither alive.
    let hub = Arc::downgrade(&replication);
    let data_dir = config.data_dir.clone();
    let max_db_size = config.max_db_size;
    metrics.sample_with(move || Some(status::sample(&*hub.upgrade()?, &data_dir, max_db_size)));
    let registry = Registry::with_metrics(
        room_config(&config),
        store.clone(),
        shutdown.child_token(),
        Some(replication.clone()),
        config.limits.max_live_docs,
        metrics.clone(),
    );
    let admission = limits::Admission::new(
        config.limits.max_connections,
        config.limits.max_connections_per_ip,
    );
    let app = Arc::new(App {
        config,
        registry: registry.clone(),
        replication,
        shutdown: shutdown.clone(),
        tasks: TaskTracker::new(),
        next_conn_id: AtomicU64::new(1),
        gate,
        admission,
        metrics,
    });
    // Bound before the peers are dialed: a bad address fails the start before anything else.
    let internal = match app.config.metrics_listen {
        Some(addr) => Some(internal::bind(addr, app.clone(), shutdown.clone()).await?),
        None => None,
    };
    app.replication.start(&app.registry);
    let background = TaskTracker::new();
    background.spawn(memory::trim_task(shutdown.clone()).in_current_span());
    info!(%addr, node = %app.replication.me.node_id, region = %app.replication.me.region, "listening");
    info!(
        "web demo: {}",
        demo_url(addr, app.config.tls.tls_cert.is_some())
    );

    let trigger = shutdown.clone();
    tokio::spawn(
        async move {
            stop.await;
            info!("shutting down: closing connections");
            trigger.cancel();
        }
        .in_current_span(),
    );

    let handshake_timeout = app.config.limits.handshake_timeout;
    let router = http::router(app.clone());
    listen::serve(
        listener,
        router,
        acceptor,
        handshake_timeout,
        app.config.limits.max_pending_connections as usize,
        shutdown.clone(),
    )
    .await;

    // Shutdown, in this order (each wait bounded, so a stuck task cannot keep the node up):
    // 1. The signal (above) cancelled `shutdown`: the accept loop stops, and every task of the
    //    node sees it: client connections send 1001, peer links send `node shutting down`,
    //    dialers stop retrying, rooms stop taking messages, the memory-trim task ends.
    // 2. The accept loop has returned (busy HTTP connections got SHUTDOWN_GRACE).
    // 3. Client connections send their close frames (SHUTDOWN_GRACE).
    // 4. Replication ends: links (each records the last cursor it holds in the store), their
    //    log streams, dialers (a connect in progress gives way), peer sockets, peer records
    //    (SHUTDOWN_GRACE). A link's acknowledgement loop is stopped with it: what it had not yet
    //    acknowledged, the peer sends again.
    // 5. Rooms finish their writes in flight (ROOM_GRACE).
    // 6. The store commits what is queued and closes; nothing writes to it after this.
    if let Some(internal) = internal
        && tokio::time::timeout(SHUTDOWN_GRACE, internal)
            .await
            .is_err()
    {
        warn!("the --metrics-listen listener did not stop within {SHUTDOWN_GRACE:?}");
    }
    wait_bounded(&app.tasks, SHUTDOWN_GRACE, "connections").await;
    wait_bounded(&app.replication.tasks, SHUTDOWN_GRACE, "peer links").await;
    wait_bounded(&registry.tasks, ROOM_GRACE, "rooms").await;
    wait_bounded(&background, SHUTDOWN_GRACE, "background tasks").await;
    store.close().await;
    info!("stopped");
    Ok(())
}

/// Closes `tasks` and waits for them to end, at most `grace`; says so if some did not.
async fn wait_bounded(tasks: &TaskTracker, grace: Duration, what: &str) {
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        warn!(
            unfinished = tasks.len(),
            "some {what} did not finish within {grace:?}; stopping anyway"
        );
    }
}

/// The part of the command line rooms use.
pub fn room_config(config: &ServeArgs) -> room::RoomConfig {
    room::RoomConfig {
        evict_after: config.evict_after,
        durability: config.durability,
        compact_after_updates: config.compact_after_updates,
        compact_after_bytes: config.compact_after_bytes,
        doc_queue: config.doc_queue,
        doc_mode: config.doc_mode.into(),
    }
}

/// Where a browser on this machine finds the demo page: a wildcard address is shown as loopback.
fn demo_url(addr: std::net::SocketAddr, tls: bool) -> String {
    let mut shown = addr;
    if addr.ip().is_unspecified() {
        shown.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    format!("{}://{shown}/", if tls { "https" } else { "http" })
}

/// Secure by default: without any authentication, serve only on a loopback address, unless
/// `--allow-anonymous` says so explicitly (and then warn at every start).
fn check_exposure(
    config: &ServeArgs,
    addr: std::net::SocketAddr,
    gate: &auth::Gate,
) -> anyhow::Result<()> {
    if !gate.is_open() {
        return Ok(());
    }
    if config.auth.allow_anonymous {
        warn!(
            %addr,
            "--allow-anonymous: anyone who can reach this address can read and overwrite every \
             document"
        );
        return Ok(());
    }
    if !addr.ip().is_loopback() {
        anyhow::bail!(
            "refusing to listen on {addr} without authentication: anyone who can reach it could \
             read and overwrite every document. Set --auth-secret, --auth-public-key or \
             --auth-url (see docs/access-control.md), listen on a loopback address \
             (127.0.0.1), or pass --allow-anonymous if this network is trusted"
        );
    }
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    // The handlers are installed here, at the call, not when the future is first polled: a
    // signal that arrives between the "listening" line and that first poll would otherwise meet
    // the default action and kill the process without a clean stop.
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
        let mut terminate =
            signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
