//! The commands that hand out a token: `token` (for scripts) and
//! `headers` (Claude Code's headers helper). A token goes only where it
//! was issued for: the helper refuses one for another URL than the host
//! says it will call.

use mcpauth_client::ConnectOptions;

use crate::args::{HeadersArgs, TokenArgs};
use crate::failure::Failure;
use crate::output::out;

/// `mcpauthctl token NAME`: the token alone on stdout.
pub async fn token(
    opts: &ConnectOptions,
    TokenArgs {
        name,
        min_ttl,
        rejected,
        status,
        www_authenticate,
    }: TokenArgs,
) -> Result<(), Failure> {
    if status != 401 && status != 403 {
        return Err(Failure::usage(
            "--status must be 401 or 403 (the HTTP status the server answered with)",
        ));
    }
    let mut client = mcpauth_client::connect(opts).await?;
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
    Ok(())
}

/// `mcpauthctl headers [NAME]`: Claude Code's headers helper.
pub async fn headers(
    opts: &ConnectOptions,
    HeadersArgs { name }: HeadersArgs,
) -> Result<(), Failure> {
    let mut client = mcpauth_client::connect(opts).await?;
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
    Ok(())
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
