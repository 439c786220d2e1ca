//! Every command, one function each, grouped by what they are about.
//! `run` is the one place a command line turns into a call: it builds
//! the connection options from the global flags and hands each command
//! its own arguments. A command prints what it did (`output`) and returns
//! a `Failure` when it did not.

mod daemon;
mod docs;
mod hosts;
mod import;
mod login;
mod servers;
mod tokens;
mod watch;

use mcpauth_client::ConnectOptions;

use crate::args::{Cli, Command};
use crate::failure::Failure;
use crate::proxy;

/// Runs the command `cli` names.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    let opts = ConnectOptions {
        socket: cli.socket.unwrap_or_else(mcpauth_proto::paths::socket_path),
        autostart: !cli.no_autostart,
    };
    match cli.command {
        Command::Status(args) => servers::status(&opts, args).await,
        Command::List(args) => servers::list(&opts, args).await,
        Command::Show(args) => servers::show(&opts, args).await,
        Command::Add(args) => servers::add(&opts, args).await,
        Command::Remove(args) => servers::remove(&opts, args).await,
        Command::Login(args) => login::login(&opts, args).await,
        Command::Logout(args) => servers::logout(&opts, args).await,
        Command::Doctor(args) => servers::doctor(&opts, args).await,
        Command::Refresh(args) => servers::refresh(&opts, args).await,
        Command::Token(args) => tokens::token(&opts, args).await,
        Command::Headers(args) => tokens::headers(&opts, args).await,
        Command::Proxy(args) => proxy::run(opts, args.name).await,
        Command::Watch(args) => watch::watch(&opts, args).await,
        Command::Connect(args) => hosts::connect(&opts, args).await,
        Command::Import(args) => import::import(&opts, args).await,
        Command::Adopt(args) => import::adopt(&opts, args).await,
        Command::Disconnect(args) => hosts::disconnect(args),
        Command::Hosts(args) => hosts::hosts(&opts, args).await,
        Command::Start => daemon::start(&opts).await,
        Command::Stop => daemon::stop(&opts).await,
        Command::Service(args) => daemon::service(&opts, args).await,
        Command::Completions(args) => docs::completions(args),
        Command::Man => docs::man(),
    }
}
