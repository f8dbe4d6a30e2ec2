//! The `concord` binary: parses the command line, sets up logging, runs the chosen command.

use clap::Parser;
use concord_server::config::{Cli, Command};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        None => concord_server::serve(cli.serve, concord_server::shutdown_signal()).await,
        Some(Command::Serve(args)) => {
            concord_server::serve(args, concord_server::shutdown_signal()).await
        }
    }
}
