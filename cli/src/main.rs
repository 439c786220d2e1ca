//! `mcpauthctl`: the command-line front end of the mcpauth broker.
//!
//! `args` is the command line (clap), `commands` one function per command,
//! `output` everything shown, `failure` how a command fails (one line and
//! an exit code). The rest are the parts commands use: `proxy` (the stdio
//! bridge), `connect`, `hosts` and `hostfile` (the MCP hosts' files),
//! `import` (other tools' logins), `service`, `browser` and `docs`. The
//! client library (`mcpauth_client`, `lib.rs`) talks to the daemon.

mod args;
mod browser;
mod commands;
mod connect;
mod docs;
mod failure;
mod hostfile;
mod hosts;
mod import;
mod output;
mod proxy;
mod service;

use std::process::ExitCode;

use mcpauth_client::exit;

fn main() -> ExitCode {
    let cli = args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcpauthctl: cannot start: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("mcpauthctl: {failure}");
            ExitCode::from(failure.code())
        }
    }
}
