//! `mcpauthd`: a thin shell over the `mcpauthd` library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mcpauth_proto::{env, paths};
use mcpauthd::context::Paths;
use mcpauthd::logging::{self, LogFormat};

/// The mcpauth broker: one OAuth client per user for every remote MCP server.
///
/// Runs in the foreground (never forks); use systemd, launchd or
/// `mcpauthctl` (which starts it on demand) to run it in the background.
#[derive(Parser)]
#[command(name = "mcpauthd", version, about, long_about)]
struct Args {
    /// Unix socket to listen on.
    #[arg(long, env = env::SOCKET, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Directory of the persistent state (sled).
    #[arg(long, env = env::STATE_DIR, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Path of config.toml.
    #[arg(long, env = env::CONFIG, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, env = env::LOG_FORMAT, value_enum, default_value = "human")]
    log_format: LogFormat,
    /// Seconds the login callback waits for the browser (default 300).
    /// Meant for tests; people want the default.
    #[arg(long, hide = true, value_name = "SECS")]
    callback_timeout_secs: Option<u64>,
    /// Seconds before any outbound HTTP request times out (default 30).
    /// Meant for tests.
    #[arg(long, hide = true, value_name = "SECS")]
    http_timeout_secs: Option<u64>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the whole state as JSON (the daemon must be stopped: the store
    /// is locked while it runs). The output contains the stored credentials.
    Export,
}

fn main() -> ExitCode {
    mcpauthd::harden_process();
    find_session_bus();
    let args = Args::parse();
    logging::init(args.log_format);
    let paths = Paths {
        socket: args.socket.unwrap_or_else(paths::socket_path),
        state_dir: args.state_dir.unwrap_or_else(paths::state_dir),
        config: args.config.unwrap_or_else(paths::config_path),
    };
    let result = match args.command {
        Some(Command::Export) => export(&paths),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))
            .and_then(|rt| {
                let mut options = mcpauthd::context::BrokerOptions::default();
                if let Some(secs) = args.callback_timeout_secs {
                    options.callback_timeout = std::time::Duration::from_secs(secs);
                }
                if let Some(secs) = args.http_timeout_secs {
                    options.http_timeout = std::time::Duration::from_secs(secs.max(1));
                }
                let result = rt
                    .block_on(mcpauthd::run(paths, options))
                    .map_err(|e| e.to_string());
                // `run` has flushed the store and removed the socket; what
                // is left in the runtime needs no cleanup. Tearing it down
                // would drop the remaining tasks on worker threads while
                // their thread-locals are destroyed, and a drop that logs
                // (h2 does, at trace level) then aborts the process. So
                // the runtime is left to the process exit.
                std::mem::forget(rt);
                result
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("mcpauthd: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A daemon started from a filtered environment (Codex passes HOME and
/// PATH only) still finds the session's D-Bus, and through it the OS
/// keyring that holds its store key: `$XDG_RUNTIME_DIR/bus`, or
/// `/run/user/UID/bus`, where systemd puts it.
fn find_session_bus() {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some() {
        return;
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| format!("/run/user/{}", nix::unistd::getuid()).into());
    let bus = runtime.join("bus");
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(&bus).is_ok_and(|m| m.file_type().is_socket()) {
        // SAFETY: called first thing in main, before any thread exists.
        unsafe {
            std::env::set_var(
                "DBUS_SESSION_BUS_ADDRESS",
                format!("unix:path={}", bus.display()),
            )
        };
    }
}

fn export(paths: &Paths) -> Result<(), String> {
    let store = mcpauthd::store::Store::open(&paths.state_dir).map_err(|e| match e {
        mcpauthd::store::StoreError::Locked { .. } => {
            format!("{e}; stop it first with `{} stop`", mcpauth_proto::CLI)
        }
        other => other.to_string(),
    })?;
    // The sealed values are opened with the store key, where it is.
    let recorded = store.key_source().map_err(|e| e.to_string())?;
    if recorded.is_some() {
        let key = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?
            .block_on(mcpauthd::existing_store_key(
                &paths.state_dir,
                recorded.as_deref(),
            ));
        match key {
            Ok(key) => store.set_key(key),
            Err(why) => eprintln!("mcpauthd: the sealed values are shown as [sealed]: {why}"),
        }
    }
    let json = store.export().map_err(|e| e.to_string())?;
    println!(
        "{}",
        serde_json::to_string_pretty(&json).expect("JSON value serialises")
    );
    Ok(())
}
