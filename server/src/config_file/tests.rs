//! The config file's keys, values, errors and precedence; `concord config`'s output read back as
//! a config file; and `concord.example.toml` against the flags `concord serve` really has.

use std::path::Path;

use clap::CommandFactory;

use super::effective::{is_secret, render};
use super::*;

const EXAMPLE: &str = include_str!("../../../concord.example.toml");

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../concord.example.toml")
}

fn serve_command() -> clap::Command {
    let mut cli = Cli::command();
    cli.build();
    cli.find_subcommand("serve").unwrap().clone()
}

fn parse(text: &str) -> Result<Vec<Setting>, FileError> {
    parse_file(text, Path::new("/etc/concord.toml"), &serve_command())
}

fn values(settings: &[Setting], id: &str) -> FileValue {
    settings
        .iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("no setting {id} in {settings:?}"))
        .value
        .clone()
}

fn one(v: &str) -> FileValue {
    FileValue::Values(vec![v.to_string()])
}

#[test]
fn keys_are_flag_names_with_tls_and_auth_tables() {
    let settings = parse(
        r#"
max-doc-name = 40
durability = "async"
evict-after = "5s"
peers = ["http://10.0.0.2:8080", "http://10.0.0.3:8080"]
peer-ca = "/ca.pem"
[tls]
cert = "/cert.pem"
key = "/key.pem"
peer-tls-required = true
[auth]
secret-file = "/run/secret"
public-key = ["/a.pem", "/b.pem"]
timeout = "1s"
allow-anonymous = false
"#,
    )
    .unwrap();
    assert_eq!(values(&settings, "max_doc_name"), one("40"));
    assert_eq!(values(&settings, "durability"), one("async"));
    assert_eq!(values(&settings, "evict_after"), one("5s"));
    assert_eq!(
        values(&settings, "peers"),
        FileValue::Values(vec![
            "http://10.0.0.2:8080".into(),
            "http://10.0.0.3:8080".into()
        ])
    );
    assert_eq!(values(&settings, "peer_ca"), one("/ca.pem"));
    assert_eq!(values(&settings, "tls_cert"), one("/cert.pem"));
    assert_eq!(values(&settings, "tls_key"), one("/key.pem"));
    assert_eq!(
        values(&settings, "peer_tls_required"),
        FileValue::Switch(true)
    );
    assert_eq!(values(&settings, "auth_secret_file"), one("/run/secret"));
    assert_eq!(
        values(&settings, "auth_public_key"),
        FileValue::Values(vec!["/a.pem".into(), "/b.pem".into()])
    );
    assert_eq!(values(&settings, "auth_timeout"), one("1s"));
    assert_eq!(
        values(&settings, "allow_anonymous"),
        FileValue::Switch(false)
    );
    // Full flag names work at the top level too.
    let settings = parse("tls-cert = \"/c\"\nauth-secret = \"s\"\n").unwrap();
    assert_eq!(values(&settings, "tls_cert"), one("/c"));
    assert_eq!(values(&settings, "auth_secret"), one("s"));
}

#[test]
fn an_unknown_key_names_the_key_and_the_file_and_suggests_the_flag() {
    let e = parse("max-doc-nam = 40\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/concord.toml: unknown key `max-doc-nam` (did you mean `max-doc-name`?)"
    );
    let e = parse("[tls]\ncrt = \"/c\"\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/concord.toml: unknown key `tls.crt` (did you mean `tls.cert`?)"
    );
    // Nothing near: no suggestion. A table that is not [tls] or [auth] is unknown too.
    let e = parse("[metrics]\nfoo = 1\n").unwrap_err();
    assert_eq!(e.to_string(), "/etc/concord.toml: unknown key `metrics`");
    // Underscored names are not flag names.
    assert!(matches!(
        parse("max_doc_name = 4\n"),
        Err(FileError::UnknownKey { .. })
    ));
    // In [auth], the prefix is dropped: `auth-secret` there is unknown.
    assert!(matches!(
        parse("[auth]\nauth-secret = \"s\"\n"),
        Err(FileError::UnknownKey { .. })
    ));
    // The file cannot name a config file; help and version are not settings.
    assert!(matches!(
        parse("config = \"/other.toml\"\n"),
        Err(FileError::BadValue { .. })
    ));
    assert!(matches!(
        parse("help = true\n"),
        Err(FileError::UnknownKey { .. })
    ));
}

#[test]
fn a_bad_value_names_the_key_and_the_file_with_clap_s_reason() {
    let e = parse("max-doc-name = 999\n").unwrap_err().to_string();
    assert!(
        e.starts_with("/etc/concord.toml: key `max-doc-name`: invalid value '999'"),
        "{e}"
    );
    assert!(e.contains("must be a number from 1 to 512"), "{e}");
    let e = parse("durability = \"maybe\"\n").unwrap_err().to_string();
    assert!(
        e.contains("key `durability`") && e.contains("sync, async"),
        "{e}"
    );
    let e = parse("evict-after = 30\n").unwrap_err().to_string();
    assert!(e.contains("key `evict-after`: invalid value '30'"), "{e}");
    let e = parse("[tls]\npeer-tls-required = \"yes\"\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "/etc/concord.toml: key `tls.peer-tls-required`: expected true or false"
    );
    let e = parse("listen = [\"127.0.0.1:1\"]\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with("key `listen`: expected one value, not a list"),
        "{e}"
    );
    let e = parse("region = true\n").unwrap_err().to_string();
    assert!(
        e.ends_with("key `region`: expected a string or a number, not a boolean"),
        "{e}"
    );
    let e = parse("send-queue = -1\n").unwrap_err().to_string();
    assert!(e.contains("key `send-queue`: invalid value '-1'"), "{e}");
    let e = parse("region = \n").unwrap_err().to_string();
    assert!(e.starts_with("/etc/concord.toml: not valid TOML"), "{e}");
}

#[test]
fn a_syntax_error_gives_its_place_and_never_the_line_that_may_hold_a_secret() {
    for text in [
        "region = \"eu\"\npeer-secret = \"hunter2-unterminated\n",
        "[auth]\nsecret = \"hunter2-twice\"\nsecret = \"hunter2-twice\"\n",
    ] {
        let e = parse(text).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "the secret is in the error: {e}");
        assert!(e.contains("line 2") || e.contains("line 3"), "{e}");
    }
}

#[test]
fn one_flag_twice_or_two_alternatives_are_refused() {
    let e = parse("tls-cert = \"/a\"\n[tls]\ncert = \"/b\"\n").unwrap_err();
    assert!(matches!(e, FileError::Duplicate { .. }), "{e}");
    assert!(e.to_string().contains("--tls-cert"), "{e}");
    let e = parse("[auth]\nsecret = \"s\"\nsecret-file = \"/f\"\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/concord.toml: `auth.secret` and `auth.secret-file` cannot be used together: pick one"
    );
}

/// The file's arguments for the flags nothing else set: a flag (or env var, both are clap's
/// `value_source`) beats the file, also through a flag it conflicts with.
#[test]
fn the_file_fills_only_what_flags_and_env_left_unset() {
    let cmd = serve_command();
    let settings = parse(
        "max-doc-name = 40\nregion = \"eu\"\npeer-secret-file = \"/f\"\n\
         [tls]\npeer-tls-required = true\n",
    )
    .unwrap();
    let matches = cmd
        .clone()
        .try_get_matches_from(["serve", "--max-doc-name", "50", "--peer-secret", "s"])
        .unwrap();
    let (args, applied) = file_args(&settings, &cmd, &matches);
    assert_eq!(args, ["--region=eu", "--peer-tls-required"]);
    assert_eq!(
        applied.into_iter().collect::<Vec<_>>(),
        ["peer_tls_required", "region"]
    );
    // The other way round: a file's inline secret loses to a secret file given as a flag.
    let settings = parse("[auth]\nsecret = \"s\"\n").unwrap();
    let matches = cmd
        .clone()
        .try_get_matches_from(["serve", "--auth-secret-file", "/f"])
        .unwrap();
    let (args, applied) = file_args(&settings, &cmd, &matches);
    assert!(args.is_empty() && applied.is_empty(), "{args:?}");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The values column of `concord config`'s output, without the sources.
fn values_only(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| {
            !l.starts_with("# config") && !l.starts_with("# The") && !l.starts_with("# Valid")
        })
        .map(|l| l.rsplit_once("  # ").map_or(l, |(v, _)| v).to_string())
        .collect()
}

#[test]
fn concord_config_output_reads_back_as_the_same_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write(dir.path(), "secret", "s3cr3t-value\n");
    let file = write(
        dir.path(),
        "a.toml",
        &format!(
            "max-doc-name = 40\nregion = \"eu\"\npeers = [\"http://a:1\"]\n\
             peer-secret = \"peer-s3cr3t\"\n\
             [auth]\nsecret-file = {:?}\n[tls]\npeer-tls-required = true\n",
            secret.to_str().unwrap()
        ),
    );
    let file_arg = file.to_str().unwrap();
    let loaded = load(["concord", "config", "--config", file_arg, "--region", "us"]).unwrap();
    let Some(Command::Config(args)) = &loaded.cli.command else {
        panic!("not config")
    };
    assert_eq!(args.serve.region, "us");
    assert_eq!(args.serve.max_doc_name, 40);
    assert_eq!(args.serve.auth.auth_secret.as_deref(), Some("s3cr3t-value"));
    assert_eq!(args.serve.peer_secret.as_deref(), Some("peer-s3cr3t"));
    let out = effective::run(&loaded.matches, loaded.file.as_ref());
    assert!(out.contains("region = \"us\"  # flag\n"), "{out}");
    assert!(
        out.contains(&format!("max-doc-name = 40  # file {file_arg}\n")),
        "{out}"
    );
    assert!(out.contains("peers = [\"http://a:1\"]  # file "), "{out}");
    assert!(out.contains("peer-tls-required = true  # file "), "{out}");
    assert!(out.contains("evict-after = \"30s\"  # default\n"), "{out}");
    assert!(out.contains("# peer-secret = <redacted>  # file "), "{out}");
    assert!(
        out.contains("# auth-secret = <redacted>  # read from --auth-secret-file "),
        "{out}"
    );
    assert!(!out.contains("s3cr3t"), "a secret in the output: {out}");
    // Saved as a config file, it gives the same configuration (the secrets aside: they are not
    // in it).
    toml::from_str::<toml::Table>(&out).expect("the output is TOML");
    let saved = write(dir.path(), "saved.toml", &out);
    let again = load(["concord", "config", "--config", saved.to_str().unwrap()]).unwrap();
    let out_again = effective::run(&again.matches, again.file.as_ref());
    let secretless = |text: &str| -> Vec<String> {
        values_only(text)
            .into_iter()
            .filter(|l| !l.contains("secret"))
            .collect()
    };
    assert_eq!(secretless(&out_again), secretless(&out));
    assert!(
        out_again.contains("region = \"us\"  # file "),
        "{out_again}"
    );
}

#[test]
fn a_secret_file_that_is_empty_stops_the_load() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write(dir.path(), "empty", "\n");
    let e = load([
        "concord",
        "serve",
        "--peer-secret-file",
        secret.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(matches!(e, LoadError::Secret(_)), "{e}");
    assert!(e.to_string().starts_with("--peer-secret-file "), "{e}");
    // The flag and its file are alternatives.
    let e = load([
        "concord",
        "--peer-secret",
        "x",
        "--peer-secret-file",
        secret.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(matches!(e, LoadError::Cli(_)), "{e}");
}

#[test]
fn settings_the_file_completes_are_checked_by_clap_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "tls.toml", "[tls]\ncert = \"/c.pem\"\n");
    let e = load(["concord", "serve", "--config", file.to_str().unwrap()]).unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("with the settings of "), "{text}");
    assert!(text.contains("--tls-key"), "{text}");
    // ... and a flag completes what the file started.
    let loaded = load([
        "concord",
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--tls-key",
        "/k.pem",
    ])
    .unwrap();
    let Some(Command::Serve(args)) = loaded.cli.command else {
        panic!("not serve")
    };
    assert_eq!(args.tls.tls_cert.as_deref(), Some(Path::new("/c.pem")));
}

/// The example, as shipped, loads through the real loader and changes no default.
#[test]
fn the_example_file_loads_and_holds_the_defaults() {
    let path = example_path();
    let with = load(["concord", "config", "--config", path.to_str().unwrap()]).unwrap();
    let without = load(["concord", "config"]).unwrap();
    let with_out = effective::run(&with.matches, with.file.as_ref());
    let without_out = effective::run(&without.matches, without.file.as_ref());
    assert_eq!(values_only(&with_out), values_only(&without_out));
    // ...and it does set them: each of its settings is shown as coming from the file.
    assert_eq!(
        with_out.matches("  # file ").count(),
        parse(EXAMPLE).unwrap().len(),
        "{with_out}"
    );
}

/// Every long flag of `concord serve` (read from clap, so a flag added later fails this test
/// until the example documents it) has a key in the example, set or commented out, with a
/// comment above it; a key with a default shows the default.
#[test]
fn the_example_file_documents_every_flag_of_serve() {
    let cmd = serve_command();
    let mut covered: BTreeSet<String> = BTreeSet::new();
    for s in parse(EXAMPLE).expect("the example parses") {
        covered.insert(s.id);
    }
    // Each commented-out `# key = value` line, uncommented alone in its table, is a valid
    // setting.
    let mut table = String::new();
    let mut previous = "";
    for line in EXAMPLE.lines() {
        if line.starts_with('[') {
            table = line.to_string();
        }
        let setting = line
            .strip_prefix("# ")
            .filter(|rest| {
                rest.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                })
            })
            .or_else(|| (!line.starts_with('#') && line.contains(" = ")).then_some(line));
        if let Some(setting) = setting {
            assert!(previous.starts_with('#'), "no comment above `{line}`");
            let alone = format!("{table}\n{setting}\n");
            let settings = parse(&alone).unwrap_or_else(|e| panic!("`{line}`: {e}"));
            let s = &settings[0];
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id() == s.id.as_str())
                .unwrap();
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if line.starts_with('#') {
                assert!(
                    defaults.is_empty(),
                    "`{line}` is commented out but --{} has a default",
                    arg.get_long().unwrap()
                );
            } else {
                let shown = match &s.value {
                    FileValue::Switch(b) => vec![b.to_string()],
                    FileValue::Values(v) => v.clone(),
                };
                assert_eq!(shown, defaults, "`{line}` is not the default");
            }
            covered.insert(s.id.clone());
        }
        previous = line;
    }
    let missing: Vec<&str> = settable(&cmd)
        .filter(|a| !covered.contains(a.get_id().as_str()))
        .filter_map(Arg::get_long)
        .collect();
    assert!(
        missing.is_empty(),
        "concord.example.toml lacks a key for --{}",
        missing.join(", --")
    );
}

#[test]
fn secrets_are_the_secret_flags_not_their_files() {
    assert!(is_secret("auth-secret"));
    assert!(is_secret("peer-secret"));
    assert!(!is_secret("auth-secret-file"));
    assert!(!is_secret("region"));
    // Every flag named like a secret is redacted by `render`.
    let cmd = serve_command();
    let matches = cmd
        .clone()
        .try_get_matches_from(["serve", "--auth-secret", "AAA", "--peer-secret", "BBB"])
        .unwrap();
    let out = render(&cmd, &matches, None);
    assert!(!out.contains("AAA") && !out.contains("BBB"), "{out}");
    assert!(
        out.contains("# auth-secret = <redacted>  # flag\n"),
        "{out}"
    );
}

#[test]
fn credentials_in_urls_are_redacted() {
    use super::effective::redact_url;
    assert_eq!(
        redact_url("https://eu.example.com:8080"),
        "https://eu.example.com:8080"
    );
    assert_eq!(
        redact_url("https://user:hunter2@auth.example.com/check?token=abc"),
        "https://<redacted>@auth.example.com/check?<redacted>"
    );
    assert_eq!(redact_url("127.0.0.1:8080"), "127.0.0.1:8080");
    assert_eq!(
        redact_url("http://a@b@host/p@q"),
        "http://<redacted>@host/p@q"
    );
}
