//! The original's help text for missing required settings, plus a pointer to embedded mode.
//!
//! The list of variables is made from the command line definition ([`super::Cli`]), grouped by
//! the same headings as `--help`, so that it names every setting with its true default and
//! cannot fall behind when settings are added.

use clap::CommandFactory as _;

/// The original's help text for missing variables (every variable, its first sentence and its
/// default), the errors, and a pointer to embedded mode.
pub(super) fn missing_help(errors: &[&str]) -> String {
    let mut out = String::from(
        "You need to configure some environment variables to start the service.\n\n\
         Available environment variables (each also a flag; `pgws --help` says more):\n",
    );
    let cmd = super::Cli::command();
    let settings: Vec<&clap::Arg> = cmd
        .get_arguments()
        .filter(|a| a.get_env().is_some())
        .collect();
    // Headings in the order `--help` shows them: that of their first setting.
    let mut headings: Vec<Option<&str>> = Vec::new();
    for arg in &settings {
        if !headings.contains(&arg.get_help_heading()) {
            headings.push(arg.get_help_heading());
        }
    }
    for heading in headings {
        out.push_str(&format!("\n {}:\n", heading.unwrap_or("Options")));
        for arg in settings.iter().filter(|a| a.get_help_heading() == heading) {
            let name = arg.get_env().unwrap_or_default().to_string_lossy();
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let default = match arg.get_default_values() {
                [] if matches!(&*name, "PGWS_DB_URI" | "PGWS_JWT_SECRET") => {
                    " (required)".to_string()
                }
                [] => String::new(),
                values => format!(
                    " (default: {})",
                    values
                        .iter()
                        .map(|v| v.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            };
            out.push_str(&format!("  {name:<34} {}{default}\n", summary(&help)));
        }
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

/// The help's first clause: up to the first `.`, `:` or `;` that ends a word outside
/// parentheses (so that `@file`, `pgws.v2` and `(e.g. …)` stay whole), without the stop.
pub(super) fn summary(help: &str) -> &str {
    let bytes = help.as_bytes();
    let mut depth = 0usize;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b'.' | b':' | b';'
                if depth == 0 && bytes.get(i + 1).is_none_or(|n| n.is_ascii_whitespace()) =>
            {
                return help[..i].trim();
            }
            _ => {}
        }
    }
    help.trim()
}
