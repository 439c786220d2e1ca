//! The commands about the configured servers and their state: `status`,
//! `list`, `show`, `add`, `remove`, `logout`, `doctor` and `refresh`.
//! Each asks the daemon and shows its answer (`output`).

use mcpauth_client::{ConnectOptions, pb};

use crate::args::{
    AddArgs, DoctorArgs, ListArgs, LogoutArgs, RefreshArgs, RemoveArgs, ShowArgs, StatusArgs,
};
use crate::failure::Failure;
use crate::output::{self, ServerJson, StatusJson, out, print_json, print_server, print_status};
use crate::{connect, hosts};

/// `mcpauthctl status`.
pub async fn status(opts: &ConnectOptions, StatusArgs { json }: StatusArgs) -> Result<(), Failure> {
    let mut client = mcpauth_client::connect(opts).await?;
    let status = client.status().await?;
    if json {
        print_json(&StatusJson::from(status));
    } else {
        print_status(status);
    }
    Ok(())
}

/// `mcpauthctl list`.
pub async fn list(opts: &ConnectOptions, ListArgs { json }: ListArgs) -> Result<(), Failure> {
    let mut client = mcpauth_client::connect(opts).await?;
    let servers = client.list_servers().await?;
    if json {
        let servers: Vec<ServerJson> = servers.into_iter().map(Into::into).collect();
        print_json(&servers);
    } else {
        output::print_list(servers);
    }
    Ok(())
}

/// `mcpauthctl show NAME`.
pub async fn show(opts: &ConnectOptions, ShowArgs { name, json }: ShowArgs) -> Result<(), Failure> {
    let mut client = mcpauth_client::connect(opts).await?;
    let server = client.get_server(&name).await?;
    if json {
        print_json(&ServerJson::from(server));
    } else {
        print_server(server);
    }
    Ok(())
}

/// `mcpauthctl add NAME URL`: through the daemon, the one writer of config.toml.
pub async fn add(
    opts: &ConnectOptions,
    AddArgs {
        name,
        url,
        client_id,
        client_secret_file,
        scopes,
        callback_port,
        client_metadata_url,
        login_hint,
    }: AddArgs,
) -> Result<(), Failure> {
    let client_secret_file = match client_secret_file {
        Some(path) => Some(std::path::absolute(&path).map_err(|e| {
            Failure::usage(format!(
                "invalid --client-secret-file {}: {e}",
                path.display()
            ))
        })?),
        None => None,
    };
    let mut client = mcpauth_client::connect(opts).await?;
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
        .filter(|s| s.name != server.name && mcpauth_client::same_server_url(&s.url, &server.url))
        .map(|s| s.name)
        .collect();
    output::print_after_add(&server, &twins);
    Ok(())
}

/// `mcpauthctl remove NAME`, with the host entries `connect` wrote for it.
pub async fn remove(
    opts: &ConnectOptions,
    RemoveArgs {
        name,
        keep_host_entries,
    }: RemoveArgs,
) -> Result<(), Failure> {
    let mut client = mcpauth_client::connect(opts).await?;
    client.remove_server(&name).await?;
    out!("removed {name}; its tokens and registration are deleted");
    let env = hosts::HostEnv::from_env();
    for line in connect::after_remove(&env, &name, keep_host_entries)? {
        out!("{line}");
    }
    Ok(())
}

/// `mcpauthctl logout NAME`.
pub async fn logout(
    opts: &ConnectOptions,
    LogoutArgs {
        name,
        forget_client,
        json,
    }: LogoutArgs,
) -> Result<(), Failure> {
    let mut client = mcpauth_client::connect(opts).await?;
    let reply = client.logout(&name, forget_client).await?;
    output::print_logout(&name, &reply, forget_client, json);
    Ok(())
}

/// `mcpauthctl doctor NAME`: exit 1 when a step has a problem.
pub async fn doctor(
    opts: &ConnectOptions,
    DoctorArgs { name, json }: DoctorArgs,
) -> Result<(), Failure> {
    let mut client = mcpauth_client::connect(opts).await?;
    let reply = client.doctor(&name).await?;
    let problems = reply.steps.iter().filter(|s| !s.ok).count();
    output::print_doctor(&name, &reply, json);
    if problems > 0 {
        return Err(Failure::failed(format!(
            "{name}: {problems} problem{} found; the fix is shown with each",
            if problems == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

/// `mcpauthctl refresh NAME`.
pub async fn refresh(
    opts: &ConnectOptions,
    RefreshArgs { name }: RefreshArgs,
) -> Result<(), Failure> {
    let mut client = mcpauth_client::connect(opts).await?;
    let reply = client.refresh(&name).await?;
    out!("{}", output::refresh_line(&name, &reply));
    Ok(())
}
