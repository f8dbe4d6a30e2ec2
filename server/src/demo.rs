//! `concord demo`: three regions on localhost in one process, meshed through links that add
//! simulated one-way latency, so a browser can watch multi-leader replication: open two regions
//! side by side, type in both, go offline in one, cut a link ([`crate::demo_console`]).

use std::net::SocketAddr;

use futures_util::future::try_join_all;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{DemoArgs, ServeArgs};
use crate::delay_proxy::DelayProxy;
use crate::demo_console::{Links, stdin_lines};

pub async fn run(
    args: DemoArgs,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let n = args.regions.len();
    anyhow::ensure!(n >= 2, "a demo needs at least two regions");
    let mut listeners = Vec::new();
    for i in 0..n {
        let mut addr = args.listen;
        if addr.port() != 0 {
            addr.set_port(addr.port() + i as u16);
        }
        listeners.push(TcpListener::bind(addr).await?);
    }
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<_, _>>()?;
    // One proxy per pair, dialed by the lower-numbered region; links carry both directions.
    let mut links = Links::new(&args.regions);
    let mut peers = vec![Vec::new(); n];
    for (i, dialer) in peers.iter_mut().enumerate() {
        for (j, target) in addrs.iter().enumerate().skip(i + 1) {
            let p = DelayProxy::start("127.0.0.1:0".parse()?, *target, args.latency).await?;
            // The region dials its peer at the proxy's port: say once which region that is.
            crate::node::node_span(&args.regions[i]).in_scope(|| {
                info!(peer_region = %args.regions[j], proxy = %p.addr, latency = ?args.latency, "peer dialed through a delay proxy");
            });
            dialer.push(format!("http://{}", p.addr));
            links.add(&args.regions[i], &args.regions[j], p);
        }
    }
    let secret = format!("demo-{:016x}", rand::random::<u64>());
    let shutdown = CancellationToken::new();
    let mut servers = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let name = &args.regions[i];
        let data = args.data_dir.join(name);
        let mut argv = vec![
            "concord".to_string(),
            format!("--region={name}"),
            format!("--node-id={name}"),
            format!("--data-dir={}", data.display()),
            format!("--listen={}", addrs[i]),
            format!("--public-url=http://{}", addrs[i]),
            format!("--peer-secret={secret}"),
        ];
        if !peers[i].is_empty() {
            argv.push(format!("--peers={}", peers[i].join(",")));
        }
        let config = ServeArgs::parse_from(argv);
        servers.push(crate::node::serve_on(
            listener,
            config,
            shutdown.clone().cancelled_owned(),
        ));
    }
    println!(
        "Concord demo: {n} regions, {} one way between them. Open two side by side:",
        humantime::format_duration(args.latency)
    );
    for (name, addr) in args.regions.iter().zip(&addrs) {
        println!("  region {name}: http://{addr}/?doc=demo&region={name}");
    }
    if let [a, b, ..] = &args.regions[..] {
        println!("Type `cut {a} {b}` (Enter) to cut a link, `heal {a} {b}` to restore it.");
    }
    println!("Ctrl-C stops everything.");
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        stop.await;
        trigger.cancel();
    });
    let servers = try_join_all(servers);
    tokio::pin!(servers);
    let mut lines = stdin_lines();
    loop {
        tokio::select! {
            done = &mut servers => {
                done?;
                break;
            }
            Some(line) = lines.recv() => match links.run(&line) {
                Ok(Some(said)) => println!("{said}"),
                Ok(None) => {}
                Err(e) => println!("{e}"),
            },
        }
    }
    drop(links);
    Ok(())
}
