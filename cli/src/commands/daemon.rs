//! The daemon's life: `start`, `stop` and `service install|uninstall`.

use mcpauth_client::{ClientError, ConnectOptions};

use crate::args::{ServiceAction, ServiceArgs};
use crate::failure::Failure;
use crate::output::out;
use crate::service;

/// `mcpauthctl start`.
pub async fn start(opts: &ConnectOptions) -> Result<(), Failure> {
    // Even with --no-autostart: starting it is the point.
    let opts = ConnectOptions {
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
    Ok(())
}

/// `mcpauthctl stop`: returns once the daemon has exited.
pub async fn stop(opts: &ConnectOptions) -> Result<(), Failure> {
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
    if !mcpauth_client::autostart::wait_for_exit(&opts.socket, std::time::Duration::from_secs(10))
        .await
    {
        return Err(Failure::failed(
            "mcpauthd was asked to stop but has not exited after 10 s; see mcpauthd.log",
        ));
    }
    out!("mcpauthd stopped");
    Ok(())
}

/// `mcpauthctl service install|uninstall`.
pub async fn service(
    opts: &ConnectOptions,
    ServiceArgs { action }: ServiceArgs,
) -> Result<(), Failure> {
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
    Ok(())
}
