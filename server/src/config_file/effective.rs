//! `concord config`: the configuration `concord serve` would run with, given the same flags, env
//! vars and `--config` file, and where each value came from. An operator checks what a node
//! really uses (did the env var win over the file?) and can save the output as a config file:
//! it is valid TOML, one `name = value  # source` line per setting. Secrets are never printed:
//! their lines are comments saying `<redacted>` and where the secret came from.

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches};

use super::{FileSource, serve_part};

/// The text `concord config` prints, from what [`super::load`] returned.
pub fn run(matches: &ArgMatches, file: Option<&FileSource>) -> String {
    let command = <crate::config::Cli as clap::CommandFactory>::command();
    let (cmd, matches) = serve_part(&command, matches).expect("`concord config` has serve's flags");
    render(cmd, matches, file)
}

/// Whether a flag holds a secret: its value is never shown (`--auth-secret`, `--peer-secret`;
/// the `*-secret-file` flags hold paths, which are shown).
pub fn is_secret(long: &str) -> bool {
    long.contains("secret") && !long.ends_with("-file")
}

/// One line per setting of `cmd` (serve's flags), from clap's `matches` and the config file.
pub fn render(cmd: &clap::Command, matches: &ArgMatches, file: Option<&FileSource>) -> String {
    let mut out = String::from(
        "# The effective configuration of `concord serve`, with where each value comes from.\n\
         # Valid as a config file (--config); secrets are never shown.\n",
    );
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(arg.get_action(), ArgAction::Help | ArgAction::Version) {
            continue;
        }
        let id = arg.get_id().as_str();
        let source = source(arg, matches, file);
        let raw: Vec<String> = matches
            .get_raw(id)
            .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let line = if is_secret(long) {
            let from_file = format!("{long}-file");
            let file_flag = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(from_file.as_str()));
            match file_flag.and_then(|f| matches.get_raw(f.get_id().as_str())) {
                Some(mut path) => format!(
                    "# {long} = <redacted>  # read from --{from_file} {}",
                    path.next().unwrap_or_default().to_string_lossy()
                ),
                None if raw.is_empty() => format!("# {long} is not set  # {source}"),
                None => format!("# {long} = <redacted>  # {source}"),
            }
        } else if id == super::CONFIG_ID {
            // The file read cannot name itself: shown, commented out.
            match raw.first() {
                Some(path) => format!("# {long} = {}  # {source}", toml_string(path)),
                None => format!("# {long} is not set  # {source}"),
            }
        } else {
            // A URL can carry credentials (`https://user:pass@host`, `?token=`): those parts are
            // redacted, and the line commented out, since it no longer holds the real value.
            let shown: Vec<String> = raw.iter().map(|v| redact_url(v)).collect();
            let redacted = shown != raw;
            match value(arg, &shown) {
                Some(value) if redacted => {
                    format!("# {long} = {value}  # {source}; credentials in it redacted")
                }
                Some(value) => format!("{long} = {value}  # {source}"),
                None => format!("# {long} is not set  # {source}"),
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// `text` with a URL's user info and query replaced by `<redacted>` (other text as it is).
pub fn redact_url(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((before, _)) => (before, "?<redacted>"),
        None => (rest, ""),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("<redacted>@{host}"),
        None => authority.to_string(),
    };
    format!("{scheme}://{authority}{path}{query}")
}

/// Where a flag's value came from: `flag`, `env NAME`, `file PATH` or `default`.
fn source(arg: &Arg, matches: &ArgMatches, file: Option<&FileSource>) -> String {
    let id = arg.get_id().as_str();
    if let Some(file) = file.filter(|f| f.applied.contains(id)) {
        return format!("file {}", file.path.display());
    }
    match matches.value_source(id) {
        Some(ValueSource::CommandLine) => "flag".into(),
        Some(ValueSource::EnvVariable) => match arg.get_env() {
            Some(name) => format!("env {}", name.to_string_lossy()),
            None => "env".into(),
        },
        _ => "default".into(),
    }
}

/// The TOML text of a flag's value; `None` when it has none.
fn value(arg: &Arg, raw: &[String]) -> Option<String> {
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => {
            let on = raw.first().is_some_and(|v| v == "true");
            Some(toml::Value::Boolean(on).to_string())
        }
        ArgAction::Append => {
            Some(toml::Value::Array(raw.iter().map(|v| scalar(v)).collect()).to_string())
        }
        _ => raw.first().map(|v| scalar(v).to_string()),
    }
}

/// A number when the text is exactly one (so reading it back gives the same text), else a string.
fn scalar(text: &str) -> toml::Value {
    match text.parse::<i64>() {
        Ok(n) if n.to_string() == text => toml::Value::Integer(n),
        _ => toml::Value::String(text.to_string()),
    }
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}
