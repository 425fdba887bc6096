//! Configuration: every `PGWS_*` variable of postgres-websockets, each also a command-line flag.
//!
//! - [`cli`]: what clap parses (flags and variables, help text, value parsers);
//! - this module: [`Config`], the resolved settings the server runs with, and the checks that
//!   settings make sense together;
//! - [`secrets`]: `@file` secrets, base64, keys; [`help`]: the original's missing-settings text.
//!
//! The runtime types a setting resolves to live with the code that uses them (the channel mode in
//! [`crate::routing`], the site in the HTTP layer, the bind address in [`crate::net`]).
//!
//! The original read its settings with `envparse`, which silently fell back to the default when a
//! value did not parse (`PGWS_PORT=abc` meant port 3000). Here a value that does not parse stops
//! start-up with a message naming the variable and the value. `True`/`False` are accepted in any
//! case. Missing required settings print the original's help text and exit with status 1.

mod cli;
mod help;
mod secrets;

use std::time::Duration;

pub use cli::{Cli, LogFormat};

use crate::address::AddressSet;
use crate::auth::{ClaimPath, KeySet, Rules};
use crate::channel::ChannelName;
use crate::http::proxy::Upstream;
use crate::http::static_files::Site;
use crate::net::{HostPreference, TlsFiles};
use crate::ops::limits::RateLimits;
use crate::pg::redact::{redact_conninfo, scrub};
use crate::routing::{ChannelMode, MessageFormat};
use help::missing_help;

/// The development secret: the original's `sample-env` secret, used by `--embedded` when no
/// `PGWS_JWT_SECRET` is given, and by the example page.
pub const DEV_SECRET: &str =
    "auwhfdnskjhewfi34uwehdlaehsfkuaeiskjnfduierhfsiweskjcnzeiluwhskdewishdnpwe";

/// Default meta channel in embedded mode, as in the original's `sample-env`.
pub const DEV_META_CHANNEL: &str = "server-info";

/// Resolved settings the server runs with. Built from [`Cli`]; tests build it the same way.
#[derive(Debug, Clone)]
pub struct Config {
    /// tokio-postgres connection settings for both the LISTEN connection and the NOTIFY pool.
    pub db: crate::pg::Database,
    /// Keys that verify tokens.
    pub keys: KeySet,
    /// Where to bind.
    pub host: HostPreference,
    /// Port to bind (0 = any free port).
    pub port: u16,
    /// The one PostgreSQL channel used as the message bus.
    pub listen_channel: ChannelName,
    /// Channel for connection events, if any.
    pub meta_channel: Option<ChannelName>,
    /// What non-websocket requests get.
    pub site: Site,
    /// Size of the NOTIFY pool.
    pub pool_size: usize,
    /// Start-up attempts for the LISTEN connection; `None` = retry for ever (the default: only an
    /// explicit `PGWS_RETRIES` without `PGWS_CHECK_LISTENER_INTERVAL` gives up).
    pub startup_retries: Option<u32>,
    /// How often the LISTEN connection is checked.
    pub check_listener_interval: Duration,
    /// TLS certificate and key, if TLS is on.
    pub tls: Option<TlsFiles>,
    /// Per-socket outbound queue limits.
    pub max_queue_messages: usize,
    /// Per-socket outbound queue limit in bytes.
    pub max_queue_bytes: usize,
    /// Largest accepted client message.
    pub max_message_size: usize,
    /// Interval between server pings (`None`: no pings).
    pub ping_interval: Option<Duration>,
    /// Admin listener address, if any.
    pub admin_address: Option<String>,
    /// Most open websockets.
    pub max_connections: usize,
    /// Most channels per socket.
    pub max_channels: usize,
    /// Time limit for request heads and TLS handshakes.
    pub handshake_timeout: Duration,
    /// Time limit for the drain at shutdown.
    pub shutdown_timeout: Duration,
    /// Whether `Gap` events are sent.
    pub gap_events: bool,
    /// Token rules beyond the signature.
    pub rules: Rules,
    /// Allowed browser origins (`None`: any).
    pub allowed_origins: Option<Vec<String>>,
    /// Abuse limits.
    pub rates: RateLimits,
    /// Proxies whose X-Forwarded-For is trusted.
    pub trusted_proxies: AddressSet,
    /// Client addresses the connection rate does not apply to.
    pub rate_exempt: AddressSet,
    /// Which PostgreSQL channels reach sockets.
    pub channel_mode: ChannelMode,
    /// Shape of client messages.
    pub message_format: MessageFormat,
    /// Lifetime of an event stream (`None`: unlimited).
    pub sse_max_age: Option<Duration>,
    /// Replay windows for resuming clients.
    pub replay: crate::stream::window::WindowLimits,
    /// Where plain HTTP requests are forwarded, if anywhere (parsed once, here).
    pub upstream: Option<Upstream>,
}

/// Why the configuration was refused. Each message names the variable and, where it has one,
/// the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Required variables are missing; the text is the original's help text plus the errors.
    #[error("{0}")]
    Missing(String),
    /// Only one of the TLS files is set.
    #[error(
        "PGWS_CERTIFICATE_FILE and PGWS_KEY_FILE must be set in tandem (got only {0}); set both for TLS or neither"
    )]
    TlsPair(&'static str),
    /// A file named with `@file` could not be read. (The I/O error is part of the text, not a
    /// `source`, so that printing the chain does not repeat it.)
    #[error("{var}: cannot read file '{path}': {error}")]
    File {
        /// The variable.
        var: &'static str,
        /// The file.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// `PGWS_JWT_SECRET_BASE64=True` but the secret is not base64.
    #[error("PGWS_JWT_SECRET: not valid base64 (PGWS_JWT_SECRET_BASE64 is True): {0}")]
    Base64(base64::DecodeError),
    /// The secret parsed as JSON but is not a usable JWK / JWK Set (the key error is part of the
    /// text, not a `source`).
    #[error("PGWS_JWT_SECRET: {0}")]
    Key(crate::auth::KeyError),
    /// The database URI does not parse.
    #[error("PGWS_DB_URI: cannot use the connection string '{shown}': {detail}")]
    DbUri {
        /// The connection string, passwords replaced by `***`.
        shown: String,
        /// What is wrong with it (passwords replaced too).
        detail: String,
    },
    /// A channel name PostgreSQL cannot use.
    #[error("{var}: '{value}' {reason}")]
    Channel {
        /// The variable.
        var: &'static str,
        /// The value.
        value: String,
        /// What is wrong with it.
        reason: crate::channel::ChannelNameError,
    },
    /// A value that does not make sense.
    #[error("{var}: '{value}' {reason}")]
    Value {
        /// The variable.
        var: &'static str,
        /// The value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The static root is not a directory.
    #[error("PGWS_ROOT_PATH: '{0}' is not a readable directory")]
    RootPath(String),
}

impl From<crate::auth::KeyError> for ConfigError {
    fn from(e: crate::auth::KeyError) -> Self {
        Self::Key(e)
    }
}

impl Cli {
    /// Resolves files, base64 and keys, and checks that the settings make sense together.
    ///
    /// `db_uri_override` is the embedded cluster's connection string, used instead of
    /// `PGWS_DB_URI`; `secret_fallback` is used when no secret is configured (embedded mode).
    pub fn resolve(
        &self,
        db_uri_override: Option<&str>,
        secret_fallback: Option<&str>,
    ) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        let db_uri = match (db_uri_override, self.db_uri.as_deref()) {
            (Some(uri), _) => Some(uri.to_string()),
            (None, Some("")) => {
                errors.push("PGWS_DB_URI is empty");
                None
            }
            (None, Some(uri)) => Some(uri.to_string()),
            (None, None) => {
                errors.push("PGWS_DB_URI is unset");
                None
            }
        };
        let secret = match (self.jwt_secret.as_deref(), secret_fallback) {
            (Some(s), _) => Some(s.to_string()),
            (None, Some(s)) => Some(s.to_string()),
            (None, None) => {
                errors.push("PGWS_JWT_SECRET is unset");
                None
            }
        };
        if !errors.is_empty() {
            return Err(ConfigError::Missing(missing_help(&errors)));
        }
        let (db_uri, secret) = (db_uri.unwrap_or_default(), secret.unwrap_or_default());

        let tls = match (&self.certificate_file, &self.key_file) {
            (Some(c), Some(k)) => Some(TlsFiles {
                certificate: c.clone(),
                key: k.clone(),
            }),
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError::TlsPair("PGWS_CERTIFICATE_FILE")),
            (None, Some(_)) => return Err(ConfigError::TlsPair("PGWS_KEY_FILE")),
        };

        let keys = self.load_keys(&secret)?;

        let db_uri = match db_uri.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|error| ConfigError::File {
                    var: "PGWS_DB_URI",
                    path: path.to_string(),
                    error,
                })?
                .trim()
                .to_string(),
            None => db_uri,
        };
        let db = crate::pg::Database::parse(&db_uri).map_err(|e| ConfigError::DbUri {
            shown: redact_conninfo(&db_uri),
            detail: scrub(&e.detail(), &db_uri),
        })?;

        let listen_channel = channel_setting("PGWS_LISTEN_CHANNEL", &self.listen_channel)?;
        let meta_channel = self
            .meta_channel
            .as_deref()
            .map(|meta| channel_setting("PGWS_META_CHANNEL", meta))
            .transpose()?;

        let site = match (&self.root_path, self.embedded) {
            (Some(root), _) => {
                if !root.is_dir() {
                    return Err(ConfigError::RootPath(root.display().to_string()));
                }
                Site::Directory(root.clone())
            }
            (None, true) => Site::Builtin,
            (None, false) => Site::Hello,
        };

        let (channel_mode, message_format) = (self.channel_mode, self.message_format);
        if message_format != MessageFormat::PostgresWebsockets && !channel_mode.uses_direct() {
            return Err(ConfigError::Value {
                var: "PGWS_MESSAGE_FORMAT",
                value: message_format.as_str().to_string(),
                reason: "NOTIFYs on the channel itself, which sockets only hear with PGWS_CHANNEL_MODE=direct or both".into(),
            });
        }
        let upstream = self
            .upstream
            .as_deref()
            .map(|url| {
                Upstream::new(url).map_err(|e| ConfigError::Value {
                    var: "PGWS_UPSTREAM",
                    value: url.to_string(),
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        Ok(Config {
            db,
            keys,
            host: HostPreference::parse(&self.host),
            port: self.port,
            listen_channel,
            meta_channel,
            site,
            pool_size: usize::from(self.pool_size),
            // Giving up is asked for with PGWS_RETRIES; PGWS_CHECK_LISTENER_INTERVAL overrides it.
            startup_retries: match (self.retries, self.check_listener_interval) {
                (Some(n), None) => Some(n.max(1)),
                _ => None,
            },
            check_listener_interval: Duration::from_millis(
                self.check_listener_interval.unwrap_or(10_000).max(100),
            ),
            tls,
            max_queue_messages: self.max_queue_messages.max(1),
            max_queue_bytes: self.max_queue_bytes.max(1),
            max_message_size: self.max_message_size.max(1),
            ping_interval: (self.ping_interval > 0)
                .then(|| Duration::from_secs(self.ping_interval)),
            admin_address: self.admin_address.clone(),
            max_connections: self.max_connections,
            max_channels: self.max_channels.max(1),
            handshake_timeout: Duration::from_secs(self.handshake_timeout.max(1)),
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout),
            gap_events: self.gap_events,
            rules: Rules {
                audience: list(self.jwt_audience.as_deref()),
                issuer: list(self.jwt_issuer.as_deref()),
                leeway: self.jwt_leeway as f64,
                mode: ClaimPath::new(&self.claim_mode),
                channel: ClaimPath::new(&self.claim_channel),
                channels: ClaimPath::new(&self.claim_channels),
                default_mode: self.default_mode.map(|m| m.as_str().to_string()),
            },
            allowed_origins: list(self.allowed_origins.as_deref()),
            rates: RateLimits {
                connections: self.rate_connections,
                messages: self.rate_messages,
                bytes: self.rate_bytes,
                per_subject: self.max_connections_per_subject,
            },
            channel_mode,
            message_format,
            upstream,
            sse_max_age: (self.sse_max_age > 0).then(|| Duration::from_secs(self.sse_max_age)),
            replay: crate::stream::window::WindowLimits {
                messages: self.replay_messages,
                bytes: self.replay_bytes,
                age: Duration::from_secs(self.replay_age),
                memory: self.replay_memory,
            },
            trusted_proxies: addresses(
                "PGWS_TRUSTED_PROXIES",
                self.trusted_proxies.as_deref().unwrap_or(""),
            )?,
            rate_exempt: addresses(
                "PGWS_RATE_CONNECTIONS_EXEMPT",
                &self.rate_connections_exempt,
            )?,
        })
    }
}

/// An address-set setting ([`AddressSet`]).
fn addresses(var: &'static str, value: &str) -> Result<AddressSet, ConfigError> {
    AddressSet::parse(value).map_err(|e| ConfigError::Value {
        var,
        value: value.to_string(),
        reason: e.to_string(),
    })
}

/// Splits a comma-separated setting; `None` when unset or empty.
pub(crate) fn list(value: Option<&str>) -> Option<Vec<String>> {
    let items: Vec<String> = value?
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    (!items.is_empty()).then_some(items)
}

/// A channel-name setting, checked by the rules of [`ChannelName`].
fn channel_setting(var: &'static str, value: &str) -> Result<ChannelName, ConfigError> {
    ChannelName::new(value).map_err(|e| ConfigError::Channel {
        var,
        value: value.to_string(),
        reason: e,
    })
}

#[cfg(test)]
mod tests {
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
        assert_eq!(booleans.len(), 3, "the boolean settings");
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
            text.starts_with(
                "error: PGWS_LOG_FORMAT: invalid value 'xml': expected one of text, json"
            ),
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
}
