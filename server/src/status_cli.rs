//! The command line of `concord status [URL] [--watch]`, an operator's view of one node and its
//! peers (run by [`crate::status_client`], printed by [`crate::status_table`]). Apart from the
//! rest so that [`crate::config`] can name it without depending on what the command uses.

use std::time::Duration;

use clap::Args;

/// `concord status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The node's URL (http:// or https://; https is verified against the system roots).
    #[arg(default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// Redraw every second until Ctrl-C.
    #[arg(long)]
    pub watch: bool,

    /// A token with `admin`, needed when the node has auth on (`concord token --admin`).
    #[arg(long, env = "CONCORD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Read the token from this file instead (one trailing newline is ignored), so it stays out
    /// of `ps` and shell history.
    #[arg(long, env = "CONCORD_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<std::path::PathBuf>,

    /// Give up on a node that has not answered within this.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}
