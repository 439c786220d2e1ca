//! `mcpauthctl watch`: the daemon's events as they happen; with
//! `--follow`, across the daemon's restarts.

use mcpauth_client::{ConnectOptions, exit};
use tokio_stream::StreamExt;

use crate::args::WatchArgs;
use crate::failure::Failure;
use crate::output;

/// `mcpauthctl watch`: one line (or JSON line) per event.
pub async fn watch(
    opts: &ConnectOptions,
    WatchArgs { name, json, follow }: WatchArgs,
) -> Result<(), Failure> {
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
            output::print_event(&output::EventJson::from(item), json);
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
