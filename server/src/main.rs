//! The `concord` binary: parses the command line, sets up logging, runs the chosen command.

use concord_server::config::Command;
use concord_server::config_file::{self, LoadError, Loaded};
use concord_server::log_format;

/// mimalloc rather than glibc's malloc: per-thread heaps suit a room's many small allocations
/// freed on other threads (frames, log entries), where glibc grew and shrank its arenas
/// constantly (over a quarter of the room's time in the replay benchmark was the kernel zeroing
/// pages for it).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    raise_fd_limit();
    // The command line, the config file and the secret files first: the log format is among
    // them, and their errors are printed before any logging exists.
    let loaded = match config_file::load(std::env::args_os()) {
        Ok(loaded) => loaded,
        Err(LoadError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    log_format::init(loaded.log_format());
    // One log line per panic instead of a backtrace on stderr. Hostile updates can make yrs
    // panic on arithmetic overflow; concord-crdt catches those and refuses the update.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(location = ?info.location(), "panic: {}", panic_message(info));
    }));
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(concord_server::memory::on_worker_park)
        .build()?
        .block_on(run(loaded))
}

async fn run(loaded: Loaded) -> anyhow::Result<()> {
    let Loaded { cli, matches, file } = loaded;
    match cli.command {
        None => concord_server::serve(cli.serve, concord_server::shutdown_signal()).await,
        Some(Command::Serve(args)) => {
            concord_server::serve(args, concord_server::shutdown_signal()).await
        }
        Some(Command::Demo(args)) => {
            concord_server::demo::run(args, concord_server::shutdown_signal()).await
        }
        Some(Command::Token(args)) => {
            let exp = concord_server::auth::token::now_secs()
                .checked_add(args.expires.as_secs())
                .filter(|&exp| exp < 1 << 40)
                .ok_or_else(|| anyhow::anyhow!("--expires is too far in the future"))?;
            let claims = concord_server::auth::token::Claims {
                exp,
                nbf: None,
                sub: args.sub,
                docs: args.docs.into_iter().collect(),
                admin: args.admin,
            };
            let secret = args.auth_secret.as_deref().unwrap_or_default();
            println!("{}", concord_server::auth::token::mint(secret, &claims));
            Ok(())
        }
        Some(Command::ForgetPeer(args)) => {
            let forgot = concord_server::store::sqlite::forget_peer(&args.data_dir, &args.node_id)?;
            if forgot {
                println!(
                    "forgot peer {}: the log no longer waits for it",
                    args.node_id
                );
            } else {
                println!("no peer {} is known here; nothing changed", args.node_id);
            }
            Ok(())
        }
        Some(Command::Status(args)) => {
            std::process::exit(concord_server::status_client::run(args).await)
        }
        Some(Command::Config(_)) => {
            print!("{}", config_file::effective::run(&matches, file.as_ref()));
            Ok(())
        }
        Some(Command::Backup(command)) => concord_server::backup::run(command),
    }
}

fn panic_message(info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into())
}

/// Every connection is a file descriptor, and the usual soft limit (1024) is far below what a
/// server holds: raise it to the hard limit, as servers do.
fn raise_fd_limit() {
    #[cfg(unix)]
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
