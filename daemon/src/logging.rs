//! Logging: `tracing` to stderr, human-readable or JSON, filtered by
//! `MCP_BROKER_LOG` (else `RUST_LOG`, else `info`).
//!
//! Secrets never reach a log line because they never reach a formatter:
//! they travel as `Secret`, whose `Debug`/`Display` are redacted.

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

pub fn init(format: LogFormat) {
    let filter = std::env::var(mcpauth_proto::env::LOG)
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|directive| EnvFilter::try_new(directive).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
