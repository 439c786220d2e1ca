//! `mcpauthctl`: the command-line front end of the mcpauth broker.

mod args;
mod browser;
mod connect;
mod docs;
mod failure;
mod hostfile;
mod hosts;
mod import;
mod login;
mod output;
mod proxy;
mod service;

use std::process::ExitCode;

use args::*;
use mcpauth_client::{ClientError, ConnectOptions, exit, pb};
use tokio_stream::StreamExt;

use failure::Failure;
use output::{
    ServerJson, StatusJson, now_ms, out, print_import, print_json, print_server, print_status,
    watch_line, write_stdout_bytes,
};

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
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("mcpauthctl: {failure}");
            ExitCode::from(failure.code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let opts = ConnectOptions {
        socket: cli
            .socket
            .clone()
            .unwrap_or_else(mcpauth_proto::paths::socket_path),
        autostart: !cli.no_autostart,
    };
    match cli.command {
        Command::Status(StatusArgs { json }) => {
            let mut client = mcpauth_client::connect(&opts).await?;
            let status = client.status().await?;
            if json {
                print_json(&StatusJson::from(status));
            } else {
                print_status(status);
            }
        }
        Command::List(ListArgs { json }) => {
            let mut client = mcpauth_client::connect(&opts).await?;
            let servers = client.list_servers().await?;
            if json {
                let servers: Vec<ServerJson> = servers.into_iter().map(Into::into).collect();
                print_json(&servers);
            } else {
                output::print_list(servers);
            }
        }
        Command::Show(ShowArgs { name, json }) => {
            let mut client = mcpauth_client::connect(&opts).await?;
            let server = client.get_server(&name).await?;
            if json {
                print_json(&ServerJson::from(server));
            } else {
                print_server(server);
            }
        }
        Command::Add(AddArgs {
            name,
            url,
            client_id,
            client_secret_file,
            scopes,
            callback_port,
            client_metadata_url,
            login_hint,
        }) => {
            let client_secret_file = match client_secret_file {
                Some(path) => Some(std::path::absolute(&path).map_err(|e| {
                    Failure::usage(format!(
                        "invalid --client-secret-file {}: {e}",
                        path.display()
                    ))
                })?),
                None => None,
            };
            let mut client = mcpauth_client::connect(&opts).await?;
            let server = client
                .add_server(pb::AddServerRequest {
                    name,
                    url,
                    client_id: client_id.unwrap_or_default(),
                    client_secret_file: client_secret_file
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    scopes,
                    callback_port: callback_port.map_or(0, u32::from),
                    client_metadata_url: client_metadata_url.unwrap_or_default(),
                    login_hint: login_hint.unwrap_or_default(),
                })
                .await?;
            out!("{}", output::added_line(&server));
            // Another entry for the same server: a second account.
            let twins: Vec<String> = client
                .list_servers()
                .await?
                .into_iter()
                .filter(|s| {
                    s.name != server.name && mcpauth_client::same_server_url(&s.url, &server.url)
                })
                .map(|s| s.name)
                .collect();
            output::print_after_add(&server, &twins);
        }
        Command::Remove(RemoveArgs {
            name,
            keep_host_entries,
        }) => {
            let mut client = mcpauth_client::connect(&opts).await?;
            client.remove_server(&name).await?;
            out!("removed {name}; its tokens and registration are deleted");
            let env = hosts::HostEnv::from_env();
            for line in connect::after_remove(&env, &name, keep_host_entries)? {
                out!("{line}");
            }
        }
        Command::Login(LoginArgs {
            name,
            idp,
            scopes,
            no_browser,
            device,
            www_authenticate,
        }) => {
            let mut client = mcpauth_client::connect(&opts).await?;
            let name = match (name, idp) {
                (Some(name), _) => name,
                (None, Some(idp)) => idp_server(&mut client, &idp).await?,
                (None, None) => unreachable!("clap requires one"),
            };
            let done = login::run(
                client,
                login::LoginArgs {
                    name,
                    scopes,
                    no_browser,
                    device,
                    www_authenticate,
                },
            )
            .await?;
            out!("{done}");
        }
        Command::Logout(LogoutArgs {
            name,
            forget_client,
            json,
        }) => {
            let mut client = mcpauth_client::connect(&opts).await?;
            let reply = client.logout(&name, forget_client).await?;
            if json {
                let shape = output::LogoutJson::new(&name, &reply, forget_client);
                output::print_json_line(&shape);
            } else {
                let forgot = if forget_client {
                    "; the client registration is forgotten"
                } else {
                    ""
                };
                out!("{}{forgot}", output::logout_line(&name, &reply, now_ms()));
            }
        }
        Command::Doctor(DoctorArgs { name, json }) => {
            let mut client = mcpauth_client::connect(&opts).await?;
            let reply = client.doctor(&name).await?;
            let problems = reply.steps.iter().filter(|s| !s.ok).count();
            if json {
                out!("{}", output::doctor_json(&name, &reply));
            } else {
                out!("{}", output::doctor_text(&name, &reply));
            }
            if problems > 0 {
                return Err(Failure::failed(format!(
                    "{name}: {problems} problem{} found; the fix is shown with each",
                    if problems == 1 { "" } else { "s" }
                )));
            }
        }
        Command::Refresh(RefreshArgs { name }) => {
            let mut client = mcpauth_client::connect(&opts).await?;
            let reply = client.refresh(&name).await?;
            out!("{}", output::refresh_line(&name, &reply));
        }
        Command::Token(TokenArgs {
            name,
            min_ttl,
            rejected,
            status,
            www_authenticate,
        }) => {
            if status != 401 && status != 403 {
                return Err(Failure::usage(
                    "--status must be 401 or 403 (the HTTP status the server answered with)",
                ));
            }
            let mut client = mcpauth_client::connect(&opts).await?;
            let reply = match rejected {
                Some(token) => {
                    client
                        .report_unauthorized(
                            &name,
                            &token,
                            status,
                            www_authenticate.as_deref().unwrap_or(""),
                        )
                        .await?
                }
                None => client.get_token(&name, min_ttl).await?,
            };
            out!("{}", reply.access_token);
        }
        Command::Headers(HeadersArgs { name }) => {
            let mut client = mcpauth_client::connect(&opts).await?;
            let name = match name.or_else(|| {
                std::env::var("CLAUDE_CODE_MCP_SERVER_NAME")
                    .ok()
                    .filter(|n| !n.is_empty())
            }) {
                Some(name) => name,
                None => headers_server_from_url(&mut client).await?,
            };
            let reply = client.get_token_for_helper(&name).await?;
            // The host says where it will send the headers: the token goes
            // there only if it was issued for that URL.
            if let Some(target) = helper_target_url()
                && !mcpauth_client::same_server_url(&reply.server_url, &target)
            {
                return Err(Failure::usage(format!(
                    "refusing to give {name}'s token for {}: it was issued for {}; \
                         the host's entry for this server must use that URL (or name the server configured for it)",
                    mcpauth_client::display_url(&target),
                    mcpauth_client::display_url(&reply.server_url),
                )));
            }
            let headers = serde_json::json!({
                "Authorization": format!("{} {}", reply.token_type, reply.access_token),
            });
            out!("{headers}");
        }
        Command::Watch(WatchArgs { name, json, follow }) => {
            let mut reconnecting = false;
            loop {
                // Waiting for the daemon to come back never starts one:
                // the person (or the service manager) stopped it.
                let options = mcpauth_client::ConnectOptions {
                    socket: opts.socket.clone(),
                    autostart: opts.autostart && !reconnecting,
                };
                let mut client = match mcpauth_client::connect(&options).await {
                    Ok(c) => c,
                    Err(e) if reconnecting && e.exit_code() == exit::UNREACHABLE => {
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let mut stream = client.watch(name.as_deref()).await?;
                if reconnecting {
                    eprintln!("mcpauthctl: reconnected to mcpauthd");
                }
                while let Some(item) = stream.next().await {
                    let item = match item {
                        Ok(item) => item,
                        // A broken connection is the daemon going away.
                        Err(status) => match client.stream_error(status) {
                            e if e.exit_code() == exit::UNREACHABLE => break,
                            e => return Err(e.into()),
                        },
                    };
                    let event = output::EventJson::from(item);
                    if json {
                        output::print_json_line(&event);
                    } else {
                        out!("{}", watch_line(&event));
                    }
                }
                // The daemon ends every stream when it stops.
                if !follow {
                    return Err(Failure::unreachable(
                        "mcpauthd stopped, so the event stream ended; run `mcpauthctl watch --follow` to wait for it to come back",
                    ));
                }
                eprintln!("mcpauthctl: mcpauthd stopped; waiting for it to come back");
                reconnecting = true;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
        Command::Proxy(ProxyArgs { name }) => proxy::run(opts, name).await?,
        Command::Connect(ConnectArgs {
            host,
            names,
            dry_run,
            replace,
        }) => {
            let host = connect::host(&host)?;
            let mut client = mcpauth_client::connect(&opts).await?;
            let servers = connect::select(&mut client, &names).await?;
            let wiring = connect::Wiring::current(&opts.socket)?;
            let env = hosts::HostEnv::from_env();
            print_report(connect::connect(
                host, &env, &servers, &wiring, dry_run, replace,
            )?)?;
        }
        Command::Import(ImportArgs {
            tools,
            urls,
            dry_run,
            json,
        }) => {
            let mut client = mcpauth_client::connect(&opts).await?;
            let env = hosts::HostEnv::from_env();
            let (results, notes) =
                run_import(&mut client, &env, &import::tools(&tools)?, &urls, dry_run).await?;
            if json {
                print_json(&output::import_json(&results, &notes));
            } else {
                print_import(&results, &notes, dry_run);
            }
            import_failure(&results)?;
        }
        Command::Adopt(AdoptArgs {
            tool,
            urls,
            dry_run,
        }) => {
            let tool = match tool.as_str() {
                "codex" | "claude-code" | "mcp-remote" => tool,
                "hermes" => {
                    return Err(Failure::usage(
                        "Hermes is not wired through a command: import its logins with `mcpauthctl import hermes`, then export tokens to its files (`export` in config.toml, see the README)",
                    ));
                }
                other => {
                    return Err(Failure::usage(format!(
                        "cannot adopt `{other}`: known tools are codex, claude-code and mcp-remote"
                    )));
                }
            };
            let mut client = mcpauth_client::connect(&opts).await?;
            let env = hosts::HostEnv::from_env();
            let (results, notes) =
                run_import(&mut client, &env, &[tool.as_str()], &urls, dry_run).await?;
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
            let mut failure = import_failure(&results).err();
            let targets: Vec<&'static dyn hosts::Host> = if tool == "mcp-remote" {
                hosts::HOSTS.to_vec()
            } else {
                vec![connect::host(&tool)?]
            };
            for host in targets {
                if !host.path(&env).exists() {
                    continue;
                }
                let report = connect::hand_over(
                    host,
                    &env,
                    &servers,
                    &wiring,
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
            if !servers.is_empty() && !dry_run {
                out!(
                    "{}'s own token files are left in place; they are no longer used by the entries above",
                    tool
                );
            }
            if let Some(f) = failure {
                return Err(f);
            }
        }
        Command::Disconnect(DisconnectArgs {
            host,
            names,
            dry_run,
        }) => {
            let host = connect::host(&host)?;
            let env = hosts::HostEnv::from_env();
            print_report(connect::disconnect(host, &env, &names, dry_run)?)?;
        }
        Command::Hosts(HostsArgs { json }) => {
            let mut client = mcpauth_client::connect(&opts).await?;
            let servers = connect::configured(&mut client).await?;
            let surveys = connect::survey(&hosts::HostEnv::from_env(), &servers);
            if json {
                print_json(&surveys);
            } else {
                for line in output::survey_lines(&surveys) {
                    out!("{line}");
                }
            }
        }
        Command::Start => {
            // Even with --no-autostart: starting it is the point.
            let opts = mcpauth_client::ConnectOptions {
                autostart: true,
                ..opts.clone()
            };
            let mut client = mcpauth_client::connect(&opts).await?;
            let status = client.status().await?;
            out!(
                "mcpauthd is running (pid {}, socket {})",
                status.pid,
                opts.socket.display()
            );
        }
        Command::Stop => {
            let mut client = match mcpauth_client::Client::connect(&opts.socket).await {
                Ok(client) => client,
                Err(ClientError::NotRunning { .. }) => {
                    out!("mcpauthd is not running");
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            client.shutdown().await?;
            // Return only once the old process is gone and its store is
            // free: it holds the instance lock until it exits.
            if !mcpauth_client::autostart::wait_for_exit(
                &opts.socket,
                std::time::Duration::from_secs(10),
            )
            .await
            {
                return Err(Failure::failed(
                    "mcpauthd was asked to stop but has not exited after 10 s; see mcpauthd.log",
                ));
            }
            out!("mcpauthd stopped");
        }
        Command::Service(ServiceArgs { action }) => {
            let result = match action {
                ServiceAction::Install { no_enable } => {
                    let mut stopped = false;
                    if !no_enable {
                        // Nothing is touched unless the manager is there.
                        service::preflight().map_err(Failure::failed)?;
                        // An autostarted daemon holds the socket the service wants.
                        if let Ok(mut c) = mcpauth_client::Client::connect(&opts.socket).await
                            && let Ok(s) = c.status_unchecked().await
                            && !s.socket_activated
                        {
                            let _ = c.shutdown().await;
                            mcpauth_client::autostart::wait_for_exit(
                                &opts.socket,
                                std::time::Duration::from_secs(10),
                            )
                            .await;
                            stopped = true;
                        }
                    }
                    let result = service::install(!no_enable);
                    if result.is_err() && stopped {
                        // The daemon as it was: started on demand again.
                        let _ = mcpauth_client::autostart::start_daemon(&opts.socket).await;
                    }
                    result
                }
                ServiceAction::Uninstall { no_disable } => service::uninstall(!no_disable),
            };
            let notes = result.map_err(Failure::failed)?;
            for note in notes {
                out!("{note}");
            }
        }
        Command::Completions(CompletionsArgs { shell }) => {
            write_stdout_bytes(&docs::completions(args::command(), shell));
        }
        Command::Man => {
            let page = docs::man_page(args::command(), EXIT_CODES)
                .map_err(|e| Failure::failed(format!("cannot render the man page: {e}")))?;
            write_stdout_bytes(&page);
        }
    }
    Ok(())
}

/// Prints what a connect or disconnect did, then fails if it has to.
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

fn print_report(report: connect::Report) -> Result<(), Failure> {
    for line in &report.lines {
        out!("{line}");
    }
    report.failure.map_or(Ok(()), Err)
}

/// The URL a host says it will send the helper's headers to: Claude
/// Code's `CLAUDE_CODE_MCP_SERVER_URL` (the only host known to say).
fn helper_target_url() -> Option<String> {
    std::env::var("CLAUDE_CODE_MCP_SERVER_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
}

/// The configured server whose URL is `$CLAUDE_CODE_MCP_SERVER_URL`.
async fn headers_server_from_url(client: &mut mcpauth_client::Client) -> Result<String, Failure> {
    let Some(wanted) = helper_target_url() else {
        return Err(Failure::usage(
            "which server? pass NAME, or run as Claude Code's headersHelper (CLAUDE_CODE_MCP_SERVER_NAME or _URL)",
        ));
    };
    let servers = client.list_servers().await?;
    let names: Vec<String> = servers
        .into_iter()
        .filter(|s| mcpauth_client::same_server_url(&s.url, &wanted))
        .map(|s| s.name)
        .collect();
    match names.as_slice() {
        [] => Err(Failure::usage(format!(
            "no configured server has the URL {wanted}; add it with `mcpauthctl add NAME {wanted}`"
        ))),
        [name] => Ok(name.clone()),
        // Two accounts on one server: which one is not ours to pick.
        several => Err(Failure::usage(format!(
            "{} have the same URL {wanted}, each with its own login: pass NAME (`mcpauthctl headers -- NAME`) to say which",
            several.join(" and ")
        ))),
    }
}

/// An enterprise server that logs in at `idp`, for `login --idp`.
async fn idp_server(client: &mut mcpauth_client::Client, idp: &str) -> Result<String, Failure> {
    let servers = client.list_servers().await?;
    servers
        .into_iter()
        .find(|s| s.grant == "enterprise" && s.identity_provider == idp)
        .map(|s| s.name)
        .ok_or_else(|| Failure::usage(format!(
                "no server uses the identity provider {idp:?}; set grant = \"enterprise\" and identity_provider = \"{idp}\" in a server's section"
            )))
}
