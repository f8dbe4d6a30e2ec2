//! `--config FILE`: `concord serve`'s settings from a TOML file, so a deployment's configuration
//! can live in version control. The file's keys are the flags' long names (`max-doc-name = 40`),
//! optionally grouped in the tables `[tls]` (`cert`, `key`, `peer-ca`, `peer-tls-required`) and
//! `[auth]` (the `--auth-*` flags without their prefix, and `allow-anonymous`). Precedence: a
//! flag beats its env var, which beats the file, which beats the default.
//!
//! The file does not get a parser of its own: its settings are checked with each flag's own
//! value parser, then given to clap as extra `--flag=value` arguments, but only for the flags
//! that neither the command line nor the environment set. Everything clap checks for flags
//! (types, ranges, `requires`, conflicts) therefore holds for the file too, and a key that is
//! no flag is an error: nothing in the file is silently ignored.
//!
//! [`parse_file`] and [`file_args`] are pure (text and clap's view of the command in, settings
//! and arguments out); [`load`] does the I/O: it reads the file and the secret files
//! ([`secret_files`]). [`effective`] is `concord config`, which prints the result.

pub mod effective;
pub mod secret_files;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::builder::Resettable;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, CommandFactory, FromArgMatches};

use crate::config::{Cli, Command};
use crate::log_format::LogFormat;
use secret_files::SecretFileError;

/// The tables a file may group flags in: a key `K` in table `T` is the flag `--T-K`, or `--K`
/// when `K` is one of the table's listed flags.
const TABLES: [(&str, &[&str]); 2] = [
    ("tls", &["peer-ca", "peer-tls-required"]),
    ("auth", &["allow-anonymous"]),
];

/// The flag naming the config file: the file cannot set it.
const CONFIG_ID: &str = "config";

/// What is wrong with a config file's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("{}: not valid TOML: {message}", path.display())]
    Toml { path: PathBuf, message: String },
    #[error("{}: unknown key `{key}`{hint}", path.display())]
    UnknownKey {
        path: PathBuf,
        key: String,
        /// ` (did you mean `x`?)`, or nothing.
        hint: String,
    },
    #[error("{}: key `{key}`: {message}", path.display())]
    BadValue {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{}: `{key}` and `{other}` set the same flag (--{flag})", path.display())]
    Duplicate {
        path: PathBuf,
        key: String,
        other: String,
        flag: String,
    },
    #[error("{}: `{key}` and `{other}` cannot be used together: pick one", path.display())]
    Conflict {
        path: PathBuf,
        key: String,
        other: String,
    },
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The command line itself (also `--help` and `--version`): print with [`clap::Error::exit`].
    #[error(transparent)]
    Cli(#[from] clap::Error),
    #[error("cannot read the config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] FileError),
    /// clap refused the flags once the file's settings were added (`--tls-cert` without
    /// `--tls-key`, say).
    #[error("with the settings of {}: {message}", path.display())]
    Rejected { path: PathBuf, message: String },
    #[error(transparent)]
    Secret(#[from] SecretFileError),
}

/// One setting of the file: which flag, under which key, with which value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The flag's clap id (`max_doc_name`).
    pub id: String,
    /// The key as written (`tls.cert`), for messages.
    pub key: String,
    pub value: FileValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileValue {
    /// A flag without a value (`peer-tls-required = true`).
    Switch(bool),
    /// The values of a flag that takes one (or, repeated, several).
    Values(Vec<String>),
}

/// The config file a configuration was read with, and the flags it set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileSource {
    pub path: PathBuf,
    /// Ids of the flags whose value came from the file (not beaten by a flag or env var).
    pub applied: BTreeSet<String>,
}

/// The command line, after the config file and secret files were read.
#[derive(Debug)]
pub struct Loaded {
    pub cli: Cli,
    /// clap's matches of the whole command line (with the file's settings added).
    pub matches: ArgMatches,
    pub file: Option<FileSource>,
}

impl Loaded {
    /// The log format asked for (text for the commands that do not take `--log-format`).
    pub fn log_format(&self) -> LogFormat {
        match &self.cli.command {
            None => self.cli.serve.log_format,
            Some(Command::Serve(args)) => args.log_format,
            _ => LogFormat::Text,
        }
    }
}

/// Parses `argv` (program name first) like `concord` does: clap, then the `--config` file if
/// one is named (by flag or `CONCORD_CONFIG`), then the secret files.
pub fn load<I, T>(argv: I) -> Result<Loaded, LoadError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let command = Cli::command();
    // First pass, lenient: a `requires` the file satisfies must not fail yet.
    let first = command
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(&argv)?;
    let mut file = None;
    let mut extra = Vec::new();
    if let Some((cmd, matches)) = serve_part(&command, &first)
        && let Some(path) = matches.get_one::<PathBuf>(CONFIG_ID)
    {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.clone(),
            source,
        })?;
        let settings = parse_file(&text, path, cmd)?;
        let (args, applied) = file_args(&settings, cmd, matches);
        extra = args;
        file = Some(FileSource {
            path: path.clone(),
            applied,
        });
    }
    let full: Vec<OsString> = argv.iter().cloned().chain(extra).collect();
    let matches = command
        .try_get_matches_from(&full)
        .map_err(|e| match &file {
            Some(f) if !f.applied.is_empty() => LoadError::Rejected {
                path: f.path.clone(),
                message: clap_message(&e),
            },
            _ => LoadError::Cli(e),
        })?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    match &mut cli.command {
        None => secret_files::resolve(&mut cli.serve)?,
        Some(Command::Serve(args)) => secret_files::resolve(args)?,
        Some(Command::Config(args)) => secret_files::resolve(&mut args.serve)?,
        Some(Command::Token(args)) => {
            if let Some(path) = &args.auth_secret_file {
                args.auth_secret = Some(secret_files::read("auth-secret-file", path)?);
            }
        }
        _ => {}
    }
    Ok(Loaded { cli, matches, file })
}

/// The part of the command line that has `concord serve`'s flags (with `--config`): the bare
/// command, `serve` or `config`; `None` for the other subcommands.
pub fn serve_part<'a>(
    command: &'a clap::Command,
    matches: &'a ArgMatches,
) -> Option<(&'a clap::Command, &'a ArgMatches)> {
    let (cmd, matches) = match matches.subcommand() {
        None => (command, matches),
        Some((name, sub)) => (command.find_subcommand(name)?, sub),
    };
    has_config_flag(cmd).then_some((cmd, matches))
}

fn has_config_flag(cmd: &clap::Command) -> bool {
    cmd.get_arguments().any(|a| a.get_id() == CONFIG_ID)
}

/// The flags a file may set: every long flag but `--config`, `--help` and `--version`.
pub fn settable(cmd: &clap::Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments().filter(|a| {
        a.get_long().is_some()
            && a.get_id() != CONFIG_ID
            && !matches!(a.get_action(), ArgAction::Help | ArgAction::Version)
    })
}

fn find_long<'a>(cmd: &'a clap::Command, long: &str) -> Option<&'a Arg> {
    settable(cmd).find(|a| a.get_long() == Some(long))
}

/// The flag of `key` in `[table]`, if any.
fn table_flag<'a>(cmd: &'a clap::Command, table: &str, key: &str) -> Option<&'a Arg> {
    let (_, members) = TABLES.iter().find(|(t, _)| *t == table)?;
    find_long(cmd, &format!("{table}-{key}")).or_else(|| {
        members
            .contains(&key)
            .then(|| find_long(cmd, key))
            .flatten()
    })
}

/// Every key a file may hold, as written (`max-doc-name`, `tls.cert`), for suggestions.
fn known_keys(cmd: &clap::Command) -> Vec<String> {
    let mut keys: Vec<String> = settable(cmd)
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect();
    for (table, members) in TABLES {
        let prefix = format!("{table}-");
        for long in settable(cmd).filter_map(Arg::get_long) {
            if let Some(key) = long.strip_prefix(&prefix) {
                keys.push(format!("{table}.{key}"));
            } else if members.contains(&long) {
                keys.push(format!("{table}.{long}"));
            }
        }
    }
    keys
}

/// A TOML syntax error as `line L, column C: what`. Never the text of the line: toml's own
/// message quotes it, and the line may hold a secret (`peer-secret = "unterminated`).
fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_string(),
    }
}

/// Reads a config file's text into settings, each checked by its flag's value parser. Errors
/// name the file and the key.
pub fn parse_file(text: &str, path: &Path, cmd: &clap::Command) -> Result<Vec<Setting>, FileError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| FileError::Toml {
        path: path.to_path_buf(),
        message: syntax_error(text, &e),
    })?;
    let mut entries: Vec<(String, &Arg, &toml::Value)> = Vec::new();
    for (key, value) in &table {
        if let (Some(_), toml::Value::Table(inner)) = (TABLES.iter().find(|(t, _)| t == key), value)
        {
            for (inner_key, inner_value) in inner {
                let written = format!("{key}.{inner_key}");
                let arg = table_flag(cmd, key, inner_key)
                    .ok_or_else(|| unknown_key(path, cmd, &written))?;
                entries.push((written, arg, inner_value));
            }
            continue;
        }
        if key == CONFIG_ID && has_config_flag(cmd) {
            return Err(FileError::BadValue {
                path: path.to_path_buf(),
                key: key.clone(),
                message: "a config file cannot name another config file".into(),
            });
        }
        let arg = find_long(cmd, key).ok_or_else(|| unknown_key(path, cmd, key))?;
        entries.push((key.clone(), arg, value));
    }
    let mut settings: Vec<Setting> = Vec::new();
    for (key, arg, value) in entries {
        let id = arg.get_id().as_str();
        if let Some(other) = settings.iter().find(|s| s.id == id) {
            return Err(FileError::Duplicate {
                path: path.to_path_buf(),
                key,
                other: other.key.clone(),
                flag: arg.get_long().unwrap_or(id).to_string(),
            });
        }
        let value = file_value(arg, value).map_err(|message| FileError::BadValue {
            path: path.to_path_buf(),
            key: key.clone(),
            message,
        })?;
        settings.push(Setting {
            id: id.to_string(),
            key,
            value,
        });
    }
    for (i, a) in settings.iter().enumerate() {
        for b in &settings[i + 1..] {
            if is_set(a) && is_set(b) && conflict(cmd, &a.id, &b.id) {
                return Err(FileError::Conflict {
                    path: path.to_path_buf(),
                    key: a.key.clone(),
                    other: b.key.clone(),
                });
            }
        }
    }
    Ok(settings)
}

/// Whether a setting gives its flag (`false` for a switch leaves it off, as when absent).
fn is_set(setting: &Setting) -> bool {
    setting.value != FileValue::Switch(false)
}

/// Whether the flags `a` and `b` are alternatives (clap's `conflicts_with`, declared on either).
fn conflict(cmd: &clap::Command, a: &str, b: &str) -> bool {
    let declares = |x: &str, y: &str| {
        cmd.get_arguments()
            .find(|arg| arg.get_id() == x)
            .is_some_and(|arg| {
                cmd.get_arg_conflicts_with(arg)
                    .iter()
                    .any(|c| c.get_id() == y)
            })
    };
    declares(a, b) || declares(b, a)
}

fn unknown_key(path: &Path, cmd: &clap::Command, key: &str) -> FileError {
    let nearest = known_keys(cmd)
        .into_iter()
        .map(|k| (edit_distance(&k, key), k))
        .min();
    let hint = match nearest {
        Some((d, k)) if d <= 3.max(key.len() / 3) => format!(" (did you mean `{k}`?)"),
        _ => String::new(),
    };
    FileError::UnknownKey {
        path: path.to_path_buf(),
        key: key.to_string(),
        hint,
    }
}

/// A TOML value as what the flag `arg` takes, checked by the flag's value parser.
fn file_value(arg: &Arg, value: &toml::Value) -> Result<FileValue, String> {
    let many = matches!(arg.get_action(), ArgAction::Append);
    match (arg.get_action(), value) {
        (ArgAction::SetTrue, toml::Value::Boolean(b)) => return Ok(FileValue::Switch(*b)),
        (ArgAction::SetTrue, _) => return Err("expected true or false".into()),
        _ => {}
    }
    let values = match value {
        toml::Value::Array(items) if many => {
            items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?
        }
        toml::Value::Array(_) => return Err("expected one value, not a list".into()),
        other => vec![scalar(other)?],
    };
    check_values(arg, &values)?;
    Ok(FileValue::Values(values))
}

/// Runs the flag's own value parser on `values` (clap keeps it private: through a command that
/// has only this flag, without its env var, default or relations to other flags).
fn check_values(arg: &Arg, values: &[String]) -> Result<(), String> {
    let long = arg.get_long().expect("settable flags are long");
    let alone = arg
        .clone()
        .env(Resettable::Reset)
        .default_value(Resettable::Reset)
        .required(false)
        .requires(Resettable::Reset)
        .conflicts_with(Resettable::Reset)
        .required_unless_present(Resettable::Reset)
        .overrides_with(Resettable::Reset);
    let cmd = clap::Command::new("concord")
        .no_binary_name(true)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(alone);
    cmd.try_get_matches_from(values.iter().map(|v| format!("--{long}={v}")))
        .map(drop)
        .map_err(|e| clap_message(&e))
}

/// A string or a number, as flag text.
fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        other => Err(format!(
            "expected a string or a number, not a {}",
            other.type_str()
        )),
    }
}

/// clap's message without its `error: ` prefix and its "try --help" footer.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    let text = text.split("\n\n").next().unwrap_or(text);
    text.trim_end().to_string()
}

/// The arguments that give the file's settings to clap, for the flags that neither the command
/// line nor the environment set (nor a flag conflicting with them, such as `--auth-secret` for a
/// file's `auth.secret-file`), and the ids of the flags the file therefore set.
pub fn file_args(
    settings: &[Setting],
    cmd: &clap::Command,
    matches: &ArgMatches,
) -> (Vec<OsString>, BTreeSet<String>) {
    let given = |id: &str| {
        matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    let mut args = Vec::new();
    let mut applied = BTreeSet::new();
    for setting in settings {
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_id() == setting.id.as_str())
        else {
            continue;
        };
        let beaten = given(&setting.id)
            || cmd.get_arguments().any(|other| {
                given(other.get_id().as_str())
                    && conflict(cmd, &setting.id, other.get_id().as_str())
            });
        if beaten {
            continue;
        }
        let long = arg.get_long().expect("settable flags are long");
        match &setting.value {
            FileValue::Switch(true) => args.push(OsString::from(format!("--{long}"))),
            FileValue::Switch(false) => {}
            FileValue::Values(values) => args.extend(
                values
                    .iter()
                    .map(|v| OsString::from(format!("--{long}={v}"))),
            ),
        }
        applied.insert(setting.id.clone());
    }
    (args, applied)
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests;
