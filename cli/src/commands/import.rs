//! `import` and `adopt`: the logins other tools hold, found here
//! (`import.rs`) and adopted by the daemon, which reads the files itself;
//! `adopt` then hands the tool's host entries over to the broker
//! (`connect::hand_over`).

use mcpauth_client::{ConnectOptions, pb};

use crate::args::{AdoptArgs, ImportArgs};
use crate::failure::Failure;
use crate::output::{self, out, print_import, print_json};
use crate::{connect, hosts, import};

/// `mcpauthctl import [TOOL...]`.
pub async fn import(
    opts: &ConnectOptions,
    ImportArgs {
        tools,
        urls,
        dry_run,
        json,
    }: ImportArgs,
) -> Result<(), Failure> {
    let mut client = mcpauth_client::connect(opts).await?;
    let env = hosts::HostEnv::from_env();
    let (results, notes) =
        run_import(&mut client, &env, &import::tools(&tools)?, &urls, dry_run).await?;
    if json {
        print_json(&output::import_json(&results, &notes));
    } else {
        print_import(&results, &notes, dry_run);
    }
    import_failure(&results)?;
    Ok(())
}

/// `mcpauthctl adopt TOOL`: import, then hand the tool's host entries over to the broker.
pub async fn adopt(
    opts: &ConnectOptions,
    AdoptArgs {
        tool,
        urls,
        dry_run,
    }: AdoptArgs,
) -> Result<(), Failure> {
    let tool = adoptable(tool)?;
    let mut client = mcpauth_client::connect(opts).await?;
    let env = hosts::HostEnv::from_env();
    let (results, notes) = run_import(&mut client, &env, &[tool.as_str()], &urls, dry_run).await?;
    print_import(&results, &notes, dry_run);
    // Hand over every server the broker now has (or, dry, would
    // have) for the tool's entries: adopted, current or awaiting
    // a login alike.
    let servers: Vec<connect::Server> = results
        .iter()
        .filter(|r| {
            !r.server.is_empty()
                && pb::ImportVerdict::try_from(r.verdict) != Ok(pb::ImportVerdict::Skipped)
        })
        .map(|r| connect::Server {
            name: r.server.clone(),
            url: r.url.clone(),
        })
        .collect();
    let wiring = connect::Wiring::current(&opts.socket)?;
    let failure = import_failure(&results).err();
    let failure = hand_over(&tool, &env, &servers, &wiring, dry_run, failure)?;
    if !servers.is_empty() && !dry_run {
        out!(
            "{}'s own token files are left in place; they are no longer used by the entries above",
            tool
        );
    }
    failure.map_or(Ok(()), Err)
}

/// The tool `adopt` was asked for, if it can adopt it.
fn adoptable(tool: String) -> Result<String, Failure> {
    match tool.as_str() {
        "codex" | "claude-code" | "mcp-remote" => Ok(tool),
        "hermes" => Err(Failure::usage(
            "Hermes is not wired through a command: import its logins with `mcpauthctl import hermes`, then export tokens to its files (`export` in config.toml, see the README)",
        )),
        other => Err(Failure::usage(format!(
            "cannot adopt `{other}`: known tools are codex, claude-code and mcp-remote"
        ))),
    }
}

/// Rewrites the entries of the hosts `tool` is used from (its own for
/// codex and claude-code, every host for mcp-remote) to go through the
/// broker. A host file that cannot be edited is said at once and the
/// rest go on; the first failure (`failure`, or this one) is returned.
fn hand_over(
    tool: &str,
    env: &hosts::HostEnv,
    servers: &[connect::Server],
    wiring: &connect::Wiring,
    dry_run: bool,
    mut failure: Option<Failure>,
) -> Result<Option<Failure>, Failure> {
    let targets: Vec<&'static dyn hosts::Host> = if tool == "mcp-remote" {
        hosts::HOSTS.to_vec()
    } else {
        vec![connect::host(tool)?]
    };
    for host in targets {
        if !host.path(env).exists() {
            continue;
        }
        let report = connect::hand_over(
            host,
            env,
            servers,
            wiring,
            dry_run,
            tool != "mcp-remote",
            true,
        );
        match report {
            Ok(report) => {
                for line in &report.lines {
                    out!("{line}");
                }
            }
            Err(e) => {
                eprintln!("mcpauthctl: {e}");
                failure.get_or_insert(e);
            }
        }
    }
    Ok(failure)
}

/// Finds what `tools` know and has the daemon import it.
async fn run_import(
    client: &mut mcpauth_client::Client,
    env: &hosts::HostEnv,
    tools: &[&str],
    urls: &[String],
    dry_run: bool,
) -> Result<(Vec<pb::ImportResult>, Vec<String>), Failure> {
    for url in urls {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(Failure::usage(format!("--url {url}: not an http(s) URL")));
        }
    }
    let found = import::find(tools, env, urls);
    let mut notes = found.notes;
    if found.present.is_empty() {
        notes.insert(
            0,
            format!(
                "no logins to import: none of {} has files on this machine",
                tools.join(", ")
            ),
        );
    }
    let results = if found.items.is_empty() {
        Vec::new()
    } else {
        client
            .import(pb::ImportRequest {
                items: found.items,
                dry_run,
            })
            .await?
    };
    Ok((results, notes))
}

/// Exit 1 when a login was refused (the lines above say why).
fn import_failure(results: &[pb::ImportResult]) -> Result<(), Failure> {
    let skipped = results
        .iter()
        .filter(|r| pb::ImportVerdict::try_from(r.verdict) == Ok(pb::ImportVerdict::Skipped))
        .count();
    if skipped == 0 {
        return Ok(());
    }
    Err(Failure::failed(format!(
        "{skipped} {} not adopted (see above); each line says why",
        if skipped == 1 {
            "login was"
        } else {
            "logins were"
        }
    )))
}
