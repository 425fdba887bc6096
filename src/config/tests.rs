//! Unit tests of settings resolution: defaults, error texts, secrets, channel names.

use super::cli::parse_bool;
use super::secrets::load_secret;
use super::*;
use crate::config::DEV_SECRET;
use clap::Parser;

fn cli(args: &[&str]) -> Cli {
    let mut full = vec!["pgws"];
    full.extend_from_slice(args);
    Cli::try_parse_from(full).expect("parses")
}

#[test]
fn bool_values_in_any_case() {
    for t in ["True", "true", "TRUE", "1"] {
        assert_eq!(parse_bool(t), Ok(true));
    }
    for f in ["False", "false", "FALSE", "0"] {
        assert_eq!(parse_bool(f), Ok(false));
    }
    assert!(parse_bool("maybe").unwrap_err().contains("maybe"));
}

#[test]
fn every_boolean_documents_the_accepted_values() {
    use clap::CommandFactory as _;
    let cmd = Cli::command();
    let booleans: Vec<_> = cmd
        .get_arguments()
        .filter(|a| {
            a.get_default_values()
                .iter()
                .any(|d| d == "True" || d == "False")
        })
        .collect();
    assert_eq!(booleans.len(), 4, "the boolean settings");
    for a in booleans {
        let help = a.get_long_help().or(a.get_help()).unwrap().to_string();
        assert!(help.contains(cli::BOOL_VALUES), "{:?}: {help}", a.get_id());
    }
    let err = parse_bool("maybe").unwrap_err();
    assert!(err.contains(cli::BOOL_VALUES), "{err}");
}

#[test]
fn values_from_the_environment_are_reported_under_the_variable() {
    use clap::CommandFactory as _;
    let args = |a: &[&str]| a.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
    let mut cmd = Cli::command();
    // The same error clap gives for PGWS_PORT=abc, told that the flag was not on the line.
    let err = cmd
        .try_get_matches_from_mut(args(&["pgws", "--port", "abc"]))
        .unwrap_err();
    let from_env = cli::name_the_variable(err, &cmd, &args(&["pgws"]), |v| v == "PGWS_PORT");
    let text = from_env.to_string();
    assert!(
        text.starts_with("error: PGWS_PORT: invalid value 'abc': invalid digit"),
        "{text}"
    );
    assert!(!text.contains("--port"), "{text}");
    // On the command line, the flag is what the user typed: clap's text.
    let err = cmd
        .try_get_matches_from_mut(args(&["pgws", "--port=abc"]))
        .unwrap_err();
    let text =
        cli::name_the_variable(err, &cmd, &args(&["pgws", "--port=abc"]), |_| true).to_string();
    assert!(text.contains("'--port <PGWS_PORT>'"), "{text}");
    // Booleans and choices.
    let err = cmd
        .try_get_matches_from_mut(args(&["pgws", "--gap-events", "maybe"]))
        .unwrap_err();
    let text = cli::name_the_variable(err, &cmd, &args(&["pgws"]), |_| true).to_string();
    assert!(
        text.starts_with(&format!(
            "error: PGWS_GAP_EVENTS: invalid value 'maybe': expected {}\n",
            cli::BOOL_VALUES
        )),
        "{text}"
    );
    let err = cmd
        .try_get_matches_from_mut(args(&["pgws", "--log-format", "xml"]))
        .unwrap_err();
    let text = cli::name_the_variable(err, &cmd, &args(&["pgws"]), |_| true).to_string();
    assert!(
        text.starts_with("error: PGWS_LOG_FORMAT: invalid value 'xml': expected one of text, json"),
        "{text}"
    );
}

/// No cause in `e`'s chain is already part of the message above it.
fn assert_no_cause_repeated(e: &dyn std::error::Error) {
    let mut above = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        assert!(
            !above.contains(&text),
            "{above:?} repeats its cause {text:?}"
        );
        above = text;
        cause = c.source();
    }
}

#[test]
fn causes_are_not_repeated() {
    let short = cli(&["--db-uri", "postgres://u@h/d", "--jwt-secret", "short"])
        .resolve(None, None)
        .unwrap_err();
    assert_no_cause_repeated(&short);
    assert_eq!(short.to_string().matches("5 bytes").count(), 1, "{short}");
    let file = cli(&[
        "--db-uri",
        "postgres://u@h/d",
        "--jwt-secret",
        "@/nonexistent/x",
    ])
    .resolve(None, None)
    .unwrap_err();
    assert_no_cause_repeated(&file);
    assert!(file.to_string().contains("No such file"), "{file}");
}

#[test]
fn connection_string_errors_hide_the_password() {
    for uri in [
        "postgres://u:secretpw@h:zz/db",
        "host=h password=secretpw port=zz",
        "host=h password='secret pw' port=zz",
    ] {
        let err = cli(&["--db-uri", uri, "--jwt-secret", DEV_SECRET])
            .resolve(None, None)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
        assert!(err.contains("***") && err.contains("port"), "{err}");
    }
}

#[test]
fn unparsable_port_names_variable_and_value() {
    let err = Cli::try_parse_from(["pgws", "--port", "abc"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("PGWS_PORT"), "{err}");
    assert!(err.contains("abc"), "{err}");
}

#[test]
fn missing_required_lists_both() {
    let err = cli(&[]).resolve(None, None).unwrap_err().to_string();
    assert!(err.contains("PGWS_DB_URI is unset"), "{err}");
    assert!(err.contains("PGWS_JWT_SECRET is unset"), "{err}");
    assert!(err.contains("--embedded"), "{err}");
}

#[test]
fn empty_db_uri_is_reported() {
    let err = cli(&["--db-uri", "", "--jwt-secret", DEV_SECRET])
        .resolve(None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("PGWS_DB_URI is empty"), "{err}");
}

#[test]
fn tls_needs_both_files() {
    let err = cli(&[
        "--db-uri",
        "postgres://x/y",
        "--jwt-secret",
        DEV_SECRET,
        "--key-file",
        "k",
    ])
    .resolve(None, None)
    .unwrap_err()
    .to_string();
    assert!(err.contains("PGWS_KEY_FILE"), "{err}");
}

#[test]
fn short_hmac_secret_is_a_start_up_error() {
    let err = cli(&["--db-uri", "postgres://u@h/d", "--jwt-secret", "short"])
        .resolve(None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("5 bytes") && err.contains("32"), "{err}");
}

#[test]
fn algorithm_allow_list() {
    let c = cli(&["--db-uri", "postgres://u@h/d", "--jwt-secret", DEV_SECRET]);
    let mut c2 = c.clone();
    c2.jwt_algorithms = Some("RS256".into());
    let err = c2.resolve(None, None).unwrap_err().to_string();
    assert!(err.contains("PGWS_JWT_ALGORITHMS"), "{err}");
    c2.jwt_algorithms = Some("HS256, nope".into());
    let err = c2.resolve(None, None).unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");
    c2.jwt_algorithms = Some("HS256".into());
    assert!(c2.resolve(None, None).is_ok());
}

#[test]
fn host_forms() {
    assert_eq!(HostPreference::parse("*"), HostPreference::Any);
    assert_eq!(HostPreference::parse("*4"), HostPreference::AnyPreferV4);
    assert_eq!(HostPreference::parse("!4"), HostPreference::V4Only);
    assert_eq!(HostPreference::parse("*6"), HostPreference::AnyPreferV6);
    assert_eq!(HostPreference::parse("!6"), HostPreference::V6Only);
    assert_eq!(
        HostPreference::parse("127.0.0.1"),
        HostPreference::Named("127.0.0.1".into())
    );
}

#[test]
fn base64_secret_accepts_url_alphabet() {
    let bytes = load_secret("cmVhbGx5cmVhbGx5cmVhbGx5cmVhbGx5dmVyeXNhZmU", true).unwrap();
    assert_eq!(bytes, b"reallyreallyreallyreallyverysafe");
    let bytes = load_secret("-_8.", true).unwrap();
    assert_eq!(bytes, vec![0xfb, 0xff]);
    assert!(matches!(
        load_secret("%%%", true),
        Err(ConfigError::Base64(_))
    ));
}

#[test]
fn secret_file_loses_one_newline() {
    let dir = std::env::temp_dir().join(format!("pgws-secret-{}", std::process::id()));
    std::fs::write(&dir, b"abc\n\n").unwrap();
    let bytes = load_secret(&format!("@{}", dir.display()), false).unwrap();
    std::fs::remove_file(&dir).ok();
    assert_eq!(bytes, b"abc\n");
}

#[test]
fn defaults_match_the_original() {
    let c = cli(&[
        "--db-uri",
        "postgres://u@localhost/db",
        "--jwt-secret",
        DEV_SECRET,
    ])
    .resolve(None, None)
    .unwrap();
    assert_eq!(c.port, 3000);
    assert_eq!(c.host, HostPreference::AnyPreferV4);
    assert_eq!(c.listen_channel, "postgres-websockets-listener");
    assert_eq!(c.pool_size, 10);
    assert_eq!(c.site, Site::Hello);
    assert_eq!(c.ping_interval, Some(Duration::from_secs(30)));
}

#[test]
fn start_up_gives_up_only_when_retries_are_asked_for() {
    let base = [
        "--db-uri",
        "postgres://u@localhost/db",
        "--jwt-secret",
        DEV_SECRET,
    ];
    let retries = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        cli(&args).resolve(None, None).unwrap().startup_retries
    };
    // Unlike the original (5): a database that is late does not take pgws down by default.
    assert_eq!(retries(&[]), None);
    assert_eq!(retries(&["--retries", "5"]), Some(5));
    assert_eq!(retries(&["--retries", "0"]), Some(1));
    // The supervisor of the original never gives up, whatever PGWS_RETRIES says.
    assert_eq!(
        retries(&["--retries", "5", "--check-listener-interval", "10000"]),
        None
    );
}

#[test]
fn address_settings() {
    let base = [
        "--db-uri",
        "postgres://u@localhost/db",
        "--jwt-secret",
        DEV_SECRET,
    ];
    let resolve = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        cli(&args).resolve(None, None)
    };
    let c = resolve(&[]).unwrap();
    assert_eq!(c.rate_exempt, AddressSet::private());
    assert!(c.trusted_proxies.is_empty());
    let c = resolve(&[
        "--trusted-proxies",
        "10.0.0.0/8, 192.0.2.1",
        "--rate-connections-exempt",
        "none",
    ])
    .unwrap();
    assert!(c.trusted_proxies.contains("10.2.3.4".parse().unwrap()));
    assert!(c.rate_exempt.is_empty());
    let err = resolve(&["--rate-connections-exempt", "10.0.0.0/33"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("PGWS_RATE_CONNECTIONS_EXEMPT"), "{err}");
    let err = resolve(&["--trusted-proxies", "proxy.local"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("PGWS_TRUSTED_PROXIES") && err.contains("proxy.local"),
        "{err}"
    );
}

#[test]
fn channel_names_are_checked() {
    let long = "x".repeat(64);
    let err = cli(&[
        "--db-uri",
        "postgres://u@h/d",
        "--jwt-secret",
        DEV_SECRET,
        "--listen-channel",
        &long,
    ])
    .resolve(None, None)
    .unwrap_err()
    .to_string();
    assert!(err.contains("PGWS_LISTEN_CHANNEL"), "{err}");
}

#[test]
fn presence_settings() {
    let base = ["--db-uri", "postgres://x", "--jwt-secret", DEV_SECRET];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        cli(&args).resolve(None, None)
    };
    let on = with(&[]).unwrap().presence.expect("on by default");
    assert_eq!(on.claim, "sub");
    assert_eq!(on.interval, Duration::from_secs(5));
    let custom = with(&["--presence-claim", "user", "--presence-interval", "250"])
        .unwrap()
        .presence
        .unwrap();
    assert_eq!(
        (custom.claim.as_str(), custom.interval),
        ("user", Duration::from_millis(250))
    );
    assert!(with(&["--presence", "off"]).unwrap().presence.is_none());
    for bad in ["0", "49", "3600001"] {
        let err = with(&["--presence-interval", bad]).unwrap_err().to_string();
        assert!(err.contains("PGWS_PRESENCE_INTERVAL"), "{err}");
    }
    let err = with(&["--presence-claim", ""]).unwrap_err().to_string();
    assert!(err.contains("PGWS_PRESENCE_CLAIM"), "{err}");
}

/// Every `PGWS_*` variable clap reads, in declaration order.
fn clap_variables() -> Vec<String> {
    use clap::CommandFactory as _;
    Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned())
        .collect()
}

/// The `PGWS_*` names a text mentions (a name is `PGWS_` and upper-case letters, digits, `_`),
/// but for patterns (`PGWS_AUTHZ_*`) and `PGWS_BIN`, the test scripts' path to the binary.
fn mentioned(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("PGWS_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        if !rest.starts_with('*') && name != "PGWS_BIN" {
            out.insert(name);
        }
    }
    out
}

// Issue 25 item 11: the README's table and the env example list every setting, and only real
// ones, so that they cannot drift from the code again.
#[test]
fn readme_table_and_env_example_list_every_setting() {
    let known: std::collections::BTreeSet<String> = clap_variables().into_iter().collect();
    assert!(known.len() > 60, "{known:?}");

    let readme = include_str!("../../README.md");
    let table: std::collections::BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `PGWS_"))
        .map(|rest| {
            format!(
                "PGWS_{}",
                &rest[..rest.find('`').expect("closing backtick")]
            )
        })
        .collect();
    let missing: Vec<_> = known.difference(&table).collect();
    assert!(
        missing.is_empty(),
        "README's configuration table lacks {missing:?}"
    );
    let unknown: Vec<_> = table.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "README's table lists unknown {unknown:?}"
    );
    // Each row's flag is the setting's flag.
    use clap::CommandFactory as _;
    for arg in Cli::command().get_arguments() {
        let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let row = format!("| `{}` | `--{long}` |", var.to_string_lossy());
        assert!(readme.contains(&row), "README lacks the row start {row}");
    }
    // Names mentioned anywhere in the README are real settings too, or one of the variables of
    // the tools around pgws, documented where they are used (not settings of the server):
    // where embedded mode finds PostgreSQL's binaries, the install script's cache, and the test
    // script's extra PostgreSQL versions.
    const NOT_SETTINGS: [&str; 4] = [
        "PGWS_PG_BIN",
        "PGWS_PG_CACHE",
        "PGWS_TEST_ALSO_ON",
        "PGWS_TEST_WAL_ALSO_ON",
    ];
    let unknown: Vec<_> = mentioned(readme)
        .into_iter()
        .filter(|n| !known.contains(n) && !NOT_SETTINGS.contains(&n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "README mentions unknown settings {unknown:?}"
    );

    let example = include_str!("../../deploy/pgws.env.example");
    let assigned: std::collections::BTreeSet<String> = example
        .lines()
        .map(|l| l.trim_start_matches('#'))
        .filter(|l| l.starts_with("PGWS_"))
        .filter_map(|l| l.split_once('=').map(|(name, _)| name.to_string()))
        .collect();
    let missing: Vec<_> = known.difference(&assigned).collect();
    assert!(
        missing.is_empty(),
        "deploy/pgws.env.example lacks {missing:?}"
    );
    let unknown: Vec<_> = mentioned(example)
        .into_iter()
        .filter(|n| !known.contains(n))
        .collect();
    assert!(
        unknown.is_empty(),
        "deploy/pgws.env.example names unknown {unknown:?}"
    );
}

// Issue 25 item 11: the missing-settings text names every setting with its true default.
#[test]
fn missing_settings_text_lists_every_setting_with_its_true_default() {
    let err = cli(&[]).resolve(None, None).unwrap_err().to_string();
    for var in clap_variables() {
        assert!(err.contains(&format!("  {var} ")), "lacks {var}:\n{err}");
    }
    let line = |var: &str| {
        err.lines()
            .find(|l| l.trim_start().starts_with(&format!("{var} ")))
            .unwrap()
            .to_string()
    };
    // PGWS_RETRIES has no default: unset, pgws retries for ever.
    assert!(
        !line("PGWS_RETRIES").contains("default"),
        "{}",
        line("PGWS_RETRIES")
    );
    assert!(
        line("PGWS_PORT").ends_with("(default: 3000)"),
        "{}",
        line("PGWS_PORT")
    );
    assert!(line("PGWS_DB_URI").ends_with("(required)"));
    assert!(line("PGWS_JWT_SECRET").ends_with("(required)"));
    assert!(err.contains("\n Database:\n"), "{err}");
    assert_eq!(
        help::summary("Address to bind: `*` (any). More"),
        "Address to bind"
    );
    assert_eq!(
        help::summary("Bytes (burst: twice as many); 0: none"),
        "Bytes (burst: twice as many)"
    );
    assert_eq!(help::summary("Reads @file. Then"), "Reads @file");
}

// Issue 25 item 12: a refused value reads as one sentence.
#[test]
fn refused_values_read_as_sentences() {
    let base = ["--db-uri", "postgres://x", "--jwt-secret", DEV_SECRET];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        cli(&args).resolve(None, None).unwrap_err().to_string()
    };
    assert_eq!(
        with(&["--presence-interval", "10"]),
        "PGWS_PRESENCE_INTERVAL: invalid value '10': expected milliseconds from 50 to 3600000"
    );
    assert_eq!(
        with(&["--source", "wal", "--channel-mode", "direct"]),
        "PGWS_CHANNEL_MODE: invalid value 'direct': PGWS_SOURCE=wal reads every message through \
         PGWS_LISTEN_CHANNEL (the logical message prefix), so it needs listen-channel"
    );
    assert_eq!(
        with(&["--upstream", "ftp://x"]),
        "PGWS_UPSTREAM: invalid value 'ftp://x': expected an http:// URL with a host"
    );
    assert_eq!(
        with(&["--wal-slot", "Bad"]),
        "PGWS_WAL_SLOT: invalid value 'Bad': expected 1 to 63 lower-case letters, digits or _"
    );
}

// Issue 25 item 12: `--help` is grouped by topic, in the same order whatever the environment
// holds, and an unset variable shows no trailing `=`.
#[test]
fn help_groups_settings_and_shows_unset_variables_without_a_value() {
    use clap::CommandFactory as _;
    let render = |env: &[(&str, &str)]| {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        cli::shown_with_the_environment(Cli::command(), |name| {
            env.iter()
                .find(|(k, _)| name == k.as_str())
                .map(|(_, v)| v.clone())
        })
        .term_width(100)
        .render_help()
        .to_string()
    };
    let flat = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let plain = render(&[]);
    assert!(!plain.contains("=]"), "{plain}");
    assert!(flat(&plain).contains("[env: PGWS_PORT]"), "{plain}");
    let headings: Vec<&str> = plain
        .lines()
        .filter(|l| l.ends_with(':') && !l.starts_with(' '))
        .collect();
    assert_eq!(
        headings,
        [
            "Options:",
            "Database:",
            "Tokens:",
            "HTTP and TLS:",
            "Channels and messages:",
            "Limits:",
            "Operations:",
            "Resume:",
            "Reading from the WAL:",
            "Presence:",
            "Authorization by the database:",
        ]
    );
    assert!(
        plain.lines().count() < 300,
        "{} lines",
        plain.lines().count()
    );
    let set = render(&[
        ("PGWS_PORT", "3001"),
        ("PGWS_DB_URI", "postgres://u:pw@h/d"),
        ("PGWS_META_CHANNEL", ""),
    ]);
    // (clap reads a set variable's value from the process's environment, which this test
    // leaves alone: the binary test `help_shows_set_variables_with_their_value` shows it.)
    assert!(
        flat(&set).contains("PGWS_DB_URI=postgres://u:***@h/d"),
        "{set}"
    );
    assert!(!set.contains("pw@"), "{set}");
    let set_headings: Vec<&str> = set
        .lines()
        .filter(|l| l.ends_with(':') && !l.starts_with(' '))
        .collect();
    assert_eq!(set_headings, headings, "the environment moves no setting");
}

#[test]
fn embedded_dir_implies_the_example_page() {
    let c = cli(&["--embedded-dir", "/tmp/x"])
        .resolve(Some("host=/tmp/x"), Some(DEV_SECRET))
        .unwrap();
    assert_eq!(c.site, Site::Builtin);
}
