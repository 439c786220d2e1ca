//! The commands that wire MCP hosts to the broker: `connect`,
//! `disconnect` and `hosts`. The editing of the hosts' files is
//! `connect.rs`'s; this is the command line around it.

use mcpauth_client::ConnectOptions;

use crate::args::{ConnectArgs, DisconnectArgs, HostsArgs};
use crate::failure::Failure;
use crate::output::{self, out};
use crate::{connect, hosts};

/// `mcpauthctl connect HOST [NAME...]`.
pub async fn connect(
    opts: &ConnectOptions,
    ConnectArgs {
        host,
        names,
        dry_run,
        replace,
    }: ConnectArgs,
) -> Result<(), Failure> {
    let host = connect::host(&host)?;
    let mut client = mcpauth_client::connect(opts).await?;
    let servers = connect::select(&mut client, &names).await?;
    let wiring = connect::Wiring::current(&opts.socket)?;
    let env = hosts::HostEnv::from_env();
    print_report(connect::connect(
        host, &env, &servers, &wiring, dry_run, replace,
    )?)?;
    Ok(())
}

/// `mcpauthctl disconnect HOST [NAME...]`.
pub fn disconnect(
    DisconnectArgs {
        host,
        names,
        dry_run,
    }: DisconnectArgs,
) -> Result<(), Failure> {
    let host = connect::host(&host)?;
    let env = hosts::HostEnv::from_env();
    print_report(connect::disconnect(host, &env, &names, dry_run)?)?;
    Ok(())
}

/// `mcpauthctl hosts`.
pub async fn hosts(opts: &ConnectOptions, HostsArgs { json }: HostsArgs) -> Result<(), Failure> {
    let mut client = mcpauth_client::connect(opts).await?;
    let servers = connect::configured(&mut client).await?;
    let surveys = connect::survey(&hosts::HostEnv::from_env(), &servers);
    output::print_hosts(&surveys, json);
    Ok(())
}

/// Prints what a connect or disconnect did, then fails if it has to.
fn print_report(report: connect::Report) -> Result<(), Failure> {
    for line in &report.lines {
        out!("{line}");
    }
    report.failure.map_or(Ok(()), Err)
}
