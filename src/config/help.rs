//! The original's help text for missing required settings, plus a pointer to embedded mode.

/// The original's help text for missing variables, plus a pointer to embedded mode.
pub(super) fn missing_help(errors: &[&str]) -> String {
    let mut out = String::from(
        "You need to configure some environment variables to start the service.\n\n\
         Available environment variables:\n",
    );
    for (name, help) in [
        ("PGWS_DB_URI", "PostgreSQL connection string (required)"),
        ("PGWS_JWT_SECRET", "secret to verify JWTs (required)"),
        (
            "PGWS_JWT_SECRET_BASE64",
            "the secret is base64 (default: False)",
        ),
        ("PGWS_HOST", "address to bind (default: *4)"),
        ("PGWS_PORT", "port to bind (default: 3000)"),
        (
            "PGWS_LISTEN_CHANNEL",
            "channel to LISTEN on (default: postgres-websockets-listener)",
        ),
        (
            "PGWS_META_CHANNEL",
            "channel for connection events (optional)",
        ),
        ("PGWS_ROOT_PATH", "static files directory (optional)"),
        ("PGWS_POOL_SIZE", "NOTIFY connections (default: 10)"),
        ("PGWS_RETRIES", "start-up connection attempts (default: 5)"),
        (
            "PGWS_CHECK_LISTENER_INTERVAL",
            "listener check interval in ms (optional)",
        ),
        ("PGWS_CERTIFICATE_FILE", "TLS certificate (optional)"),
        ("PGWS_KEY_FILE", "TLS key (optional)"),
    ] {
        out.push_str(&format!("  {name:<30} {help}\n"));
    }
    out.push_str("\nParsing errors:\n");
    for e in errors {
        out.push_str(&format!("  {e}\n"));
    }
    out.push_str(
        "\nHint: `pgws --embedded` starts pgws with a private, throwaway PostgreSQL to try it out.\n\
         Run `pgws --help` for every option.",
    );
    out
}
