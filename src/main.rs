//! The `pgws` binary: parse settings, set up logging, start the embedded cluster if asked, bind,
//! serve until SIGINT/SIGTERM, and turn the outcome into an exit status.

use std::process::ExitCode;

use anyhow::Context as _;
use pgws::SourceStatus as ListenerStatus;
use pgws::config::{ConfigError, DEV_META_CHANNEL, DEV_SECRET};
use pgws::embedded::Cluster;
use pgws::{Cli, Server};
use tokio_util::sync::CancellationToken;

/// `println!` that never panics: a closed stdout (`pgws | head -1`) is no reason to stop serving.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that never panics on a closed stderr.
macro_rules! complain {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// The error and its causes, each cause once: a cause whose text the message already contains
/// is not repeated.
fn chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn main() -> ExitCode {
    let mut cli = match Cli::from_env_and_args() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            // `print` returns the write error (a closed stdout after `--help`) instead of panicking.
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let filter = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(f) => f,
        Err(_) => match tracing_subscriber::EnvFilter::try_new(&cli.log_level) {
            Ok(f) => f,
            Err(e) => {
                complain!("PGWS_LOG_LEVEL: invalid value '{}': {e}", cli.log_level);
                return ExitCode::from(1);
            }
        },
    };
    use std::io::IsTerminal as _;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    // A closed stderr loses the log lines; `log_internal_errors` would report that with
    // `eprintln!`, which panics.
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .with_ansi(colour)
        .with_env_filter(filter);
    if cli.log_format == pgws::config::LogFormat::Json {
        logs.json().with_current_span(true).init();
    } else {
        logs.init();
    }
    say!(
        "pgws {} / Connects websockets to PostgreSQL asynchronous notifications.",
        env!("CARGO_PKG_VERSION")
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            complain!("pgws: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(&mut cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            complain!("pgws: {}", chain(&e));
            ExitCode::from(1)
        }
    }
}

async fn serve(cli: &mut Cli) -> anyhow::Result<()> {
    // `--embedded-dir DIR` is embedded mode with a cluster kept in DIR.
    cli.embedded |= cli.embedded_dir.is_some();
    let cluster = if cli.embedded {
        if cli.db_uri.is_some() {
            tracing::warn!("embedded mode: PGWS_DB_URI is ignored");
        }
        cli.meta_channel
            .get_or_insert_with(|| DEV_META_CHANNEL.to_string());
        let kept = cli.embedded_dir.clone();
        let cluster = tokio::task::spawn_blocking(move || match kept {
            Some(dir) => Cluster::start_in(&dir),
            None => Cluster::start(),
        })
        .await
        .context("embedded PostgreSQL")??;
        if cluster.is_kept() {
            say!(
                "Embedded mode: a PostgreSQL {} cluster kept in {} (stopped when pgws exits, reused at the next start). Not for production.",
                cluster.version,
                cluster.socket_dir().display()
            );
        } else {
            say!(
                "Embedded mode: a throwaway PostgreSQL {} cluster, removed when pgws exits. Not for production.",
                cluster.version
            );
        }
        say!(
            "Embedded PostgreSQL: {}",
            cluster.connection_string("postgres")
        );
        Some(cluster)
    } else {
        None
    };
    let dev_secret = cli.embedded && cli.jwt_secret.is_none();
    let db_override = cluster.as_ref().map(|c| c.connection_string("postgres"));
    let config = if cli.drop_wal_slot.is_some() {
        // Dropping a slot needs the database only: no secret is asked for, nor read.
        let mut database_only = cli.clone();
        database_only.jwt_secret = None;
        database_only.jwt_secret_base64 = false;
        database_only.jwt_algorithms = None;
        database_only.resolve(db_override.as_deref(), Some(DEV_SECRET))
    } else {
        cli.resolve(db_override.as_deref(), dev_secret.then_some(DEV_SECRET))
    };
    let config = match config {
        Ok(c) => c,
        Err(ConfigError::Missing(help)) => {
            complain!("{help}");
            std::process::exit(1);
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(slot) = &cli.drop_wal_slot {
        pgws::drop_wal_slot(&config, slot)
            .await
            .map_err(|e| anyhow::anyhow!("cannot drop the replication slot {slot}: {e}"))?;
        say!("Dropped the replication slot {slot}.");
        return Ok(());
    }
    let tls = config.tls.is_some();
    let server = Server::bind(config).await?;
    let addr = server.local_addr();
    say!("Listening on port {}", addr.port());

    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    let secret = cli
        .jwt_secret
        .clone()
        .unwrap_or_else(|| DEV_SECRET.to_string());
    tokio::spawn(reload_keys_on_sighup(cli.clone(), secret, server.keys()));
    let mut status = server.listener_status();
    let run = tokio::spawn(server.run(shutdown));
    // In embedded mode (our own database, up already), say how to use it once notifications flow.
    if let Some(cluster) = &cluster {
        let listening = status.wait_for(|s| matches!(s, ListenerStatus::Listening { .. }));
        if tokio::time::timeout(std::time::Duration::from_secs(30), listening)
            .await
            .is_ok_and(|r| r.is_ok())
        {
            let scheme = if tls { "https" } else { "http" };
            say!(
                "Open {scheme}://localhost:{}/ in a browser to try it.",
                addr.port()
            );
            if dev_secret {
                let token = jsonwebtoken::encode(
                    &jsonwebtoken::Header::default(),
                    &serde_json::json!({"mode": "rw"}),
                    &jsonwebtoken::EncodingKey::from_secret(DEV_SECRET.as_bytes()),
                )?;
                say!("Development secret: {DEV_SECRET}");
                say!("Development token: {token}");
                let curl_tls = if tls { "-k " } else { "" };
                say!(
                    "Watch a channel: curl -N {curl_tls}-H 'Accept: text/event-stream' {scheme}://localhost:{}/chat/{token}",
                    addr.port()
                );
            }
            let send = match cli.source {
                pgws::config::SourceKind::Notify => "pg_notify(",
                pgws::config::SourceKind::Wal => "pg_logical_emit_message(true, ",
            };
            say!(
                "Send from SQL: {} \"{}\" -c \"SELECT {send}'{}', json_build_object('channel','chat','payload','hello')::text)\"",
                pgws::embedded::psql_command(),
                cluster.connection_string("postgres"),
                cli.listen_channel
            );
        }
    }
    let result = run.await.context("server task")?;
    // The server has closed its connections; stopping the cluster now ends none of them.
    if let Some(cluster) = cluster {
        let dir = cluster.socket_dir().display().to_string();
        let kept = cluster.is_kept();
        match tokio::task::spawn_blocking(move || cluster.stop()).await {
            Ok(Ok(())) if kept => say!("Embedded PostgreSQL stopped; cluster kept in {dir}."),
            Ok(Ok(())) => say!("Embedded PostgreSQL stopped; cluster {dir} removed."),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "embedded PostgreSQL: {dir} may be left behind")
            }
            Err(e) => tracing::warn!(error = %e, "embedded PostgreSQL: {dir} may be left behind"),
        }
    }
    result.map_err(Into::into)
}

/// Re-reads the secret (typically a JWKS `@file`) on SIGHUP and swaps the keys; open sockets are
/// untouched. A secret that no longer loads keeps the old keys and logs why.
async fn reload_keys_on_sighup(
    cli: Cli,
    secret: String,
    keys: std::sync::Arc<std::sync::RwLock<pgws::auth::KeySet>>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot listen for SIGHUP; keys will not be reloaded");
        return;
    };
    while hup.recv().await.is_some() {
        match cli.load_keys(&secret) {
            Ok(new) => {
                let n = new.len();
                *keys.write().unwrap_or_else(|p| p.into_inner()) = new;
                tracing::info!(keys = n, "SIGHUP: JWT keys reloaded");
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: keeping the old JWT keys"),
        }
    }
}

/// Cancels `shutdown` on SIGINT (Ctrl-C) or SIGTERM.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
    shutdown.cancel();
}
