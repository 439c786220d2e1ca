//! `mcpauthctl login`: drives the person through the browser login the
//! daemon runs.
//!
//! The daemon owns the flow and the loopback callback; this command shows
//! the URL, opens it (see `browser`), shows progress while waiting, accepts
//! a pasted redirect URL in headless sessions, and cancels the flow on
//! Ctrl-C. It blocks only when a person can act: with a terminal, a
//! browser, or a redirect URL coming on stdin.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use mcpauth_client::{Client, ClientError, ConnectOptions, pb};
use tokio_stream::StreamExt;

use crate::args::LoginArgs;
use crate::browser;
use crate::failure::Failure;
use crate::output::{self, now_ms, out, relative};

/// `mcpauthctl login NAME` or `login --idp IDP`.
pub async fn login(opts: &ConnectOptions, mut args: LoginArgs) -> Result<(), Failure> {
    let mut client = mcpauth_client::connect(opts).await?;
    let name = match (args.name.take(), &args.idp) {
        (Some(name), _) => name,
        (None, Some(idp)) => idp_server(&mut client, idp).await?,
        (None, None) => unreachable!("clap requires one"),
    };
    let done = run(client, name, args).await?;
    out!("{done}");
    Ok(())
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

fn stderr(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The terminal's width, if stderr is one.
fn width() -> Option<usize> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let mut size = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we own.
    let ok = unsafe { nix::libc::ioctl(2, nix::libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_col > 20).then_some(size.ws_col as usize)
}

/// Prints a paragraph, wrapped at word boundaries to the terminal's width
/// (unwrapped when stderr is not a terminal: the reader wraps it).
fn paragraph(text: &str) {
    let Some(width) = width() else {
        stderr(text);
        return;
    };
    stderr(&wrap(text, width));
}

fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split(' ') {
        let len = word.chars().count();
        if line > 0 && line + 1 + len > width {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += len;
    }
    out
}

fn failure(result: &pb::LoginResult) -> Failure {
    let message = format!("login failed: {}", result.error);
    match pb::LoginFailure::try_from(result.failure) {
        Ok(pb::LoginFailure::Denied) => Failure::login_required(message),
        _ => Failure::failed(message),
    }
}

/// Reads pasted lines from stdin on a thread of its own.
fn paste_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            line.clear();
            match stdin.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let trimmed = line.trim();
                    if !trimmed.is_empty() && tx.blocking_send(trimmed.to_string()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// Whether the daemon that answers runs on another machine, its socket
/// forwarded here (`ssh -R`, README "Over SSH"): it names another socket
/// than the one we dialled, or its pid is no mcpauthd here. Its callback
/// then listens on that machine's loopback, not this one's.
fn daemon_elsewhere(status: &pb::StatusReply, dialled: &std::path::Path) -> bool {
    let canonical = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.into());
    if canonical(std::path::Path::new(&status.socket_path)) != canonical(dialled) {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{}/comm", status.pid)) {
        Ok(comm) => comm.trim() != "mcpauthd",
        // No such process here (or no /proc: say nothing).
        Err(e) => {
            e.kind() == std::io::ErrorKind::NotFound && std::path::Path::new("/proc/self").exists()
        }
    }
}

/// The interactive login of `name`: what the person sees until the
/// daemon says how it ended.
async fn run(mut client: Client, name: String, args: LoginArgs) -> Result<String, Failure> {
    // Logging in again is allowed (another account, more scope), but not
    // silently: the person hears what they already have.
    if let Ok(server) = client.get_server(&name).await
        && server.state == pb::AuthState::Authorized as i32
    {
        let expiry = match server.token_expires_at_unix_ms {
            0 => "expiry unknown".to_string(),
            at => format!("token expires {}", relative(at, now_ms())),
        };
        paragraph(&format!(
            "{} is already logged in ({expiry}). Logging in again replaces that login once this one completes; Ctrl-C keeps it.",
            name
        ));
    }
    // With neither a browser nor a terminal, nobody can open the URL here
    // or paste an address: a device code, shown to whoever reads the
    // output, is the one way left (when the AS offers it).
    let method = if args.device {
        pb::LoginMethod::Device
    } else if !args.no_browser && browser::is_headless() && !std::io::stdin().is_terminal() {
        pb::LoginMethod::DeviceIfOffered
    } else {
        pb::LoginMethod::Browser
    };
    let request = pb::LoginRequest {
        server: name.clone(),
        scopes: args.scopes.clone(),
        method: method.into(),
        www_authenticate: args.www_authenticate.clone().unwrap_or_default(),
    };
    let mut stream = client.login_with(request).await?;
    let started = match stream.next().await {
        Some(Ok(pb::LoginEvent {
            kind: Some(pb::login_event::Kind::Started(s)),
        })) => s,
        Some(Ok(pb::LoginEvent {
            kind: Some(pb::login_event::Kind::Device(device)),
        })) => return device_login(client, &name, device, stream).await,
        Some(Err(status)) => return Err(client.stream_error(status).into()),
        _ => {
            return Err(Failure::failed("the daemon ended the login without a URL"));
        }
    };
    let headless = args.no_browser || browser::is_headless();
    let interactive = std::io::stderr().is_terminal();
    let name = &name;

    // The URL on a line of its own, unindented, so it copies whole however
    // the terminal wraps it.
    paragraph(&format!(
        "Log in to {name} by opening this URL in a browser:"
    ));
    stderr(&format!("\n{}\n", started.authorization_url));
    if started.joined {
        stderr("(joining the login already in progress)");
    }
    let mut pasted = None;
    let elsewhere = headless
        && client
            .status()
            .await
            .is_ok_and(|s| daemon_elsewhere(&s, client.socket()));
    if headless && elsewhere {
        // Over a forwarded socket: the daemon, and its callback, are on
        // the machine the socket comes from.
        paragraph(
            "mcpauthd runs on another machine (its socket is forwarded here): open the URL in a browser on that machine, where its callback listens; no tunnel is needed.",
        );
        paragraph(&format!(
            "Or open it anywhere and paste below the address your browser ends up on (it starts with {}).",
            started.redirect_uri
        ));
        if std::io::stdin().is_terminal() {
            let _ = write!(std::io::stderr(), "\nPaste the address and press Enter: ");
            let _ = std::io::stderr().flush();
        }
        pasted = Some(paste_lines());
    } else if headless {
        let port = started.callback_port;
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "this-host".into());
        if !args.no_browser {
            paragraph(
                "No display and no $BROWSER here, so no browser was opened (set $BROWSER to use one).",
            );
        }
        paragraph(
            "Either forward the callback port from the machine with the browser, then open the URL there:",
        );
        stderr(&format!("\n  ssh -N -L {port}:127.0.0.1:{port} {host}\n"));
        paragraph(&format!(
            "or open the URL on any machine and paste below the address your browser ends up on (it starts with {}, and may show an error page there).",
            started.redirect_uri
        ));
        // Proposed only where the authorization server has a device
        // endpoint: elsewhere `--device` would only fail.
        if started.device_offered {
            paragraph(&format!(
                "(Or `mcpauthctl login {name} --device` needs neither: this server offers a code to enter on any device.)"
            ));
        }
        if std::io::stdin().is_terminal() {
            // A prompt on its own line; nothing else is written while the
            // person types.
            let _ = write!(std::io::stderr(), "\nPaste the address and press Enter: ");
            let _ = std::io::stderr().flush();
        }
        pasted = Some(paste_lines());
    } else {
        match browser::open(&started.authorization_url) {
            Ok(program) => stderr(&format!("Opened it with {program}.")),
            Err(e) => {
                stderr(&format!(
                    "Could not open a browser ({e}); open the URL yourself."
                ));
                if !std::io::stdin().is_terminal() && !interactive {
                    let _ = client.cancel_login(name).await;
                    return Err(Failure::login_required(format!(
                        "login required: no browser and no terminal here; run `mcpauthctl login {name}` in a terminal"
                    )));
                }
            }
        }
    }
    // The spinner only runs while nobody is typing.
    let tty = interactive;
    let interactive = interactive && pasted.is_none();

    let spinner = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut frame = 0usize;
    if !interactive && pasted.is_none() {
        stderr("Waiting for the browser (Ctrl-C to cancel)...");
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let clear = |interactive: bool| {
        if interactive {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    };
    loop {
        tokio::select! {
            event = stream.next() => {
                clear(interactive);
                match event {
                    Some(Ok(pb::LoginEvent { kind: Some(pb::login_event::Kind::Finished(result)) })) => {
                        return if result.ok { Ok(output::login_line(name, &result)) } else { Err(failure(&result)) };
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(status)) => return Err(client.stream_error(status).into()),
                    None => {
                        return Err(Failure::unreachable("the daemon stopped before the login finished"));
                    }
                }
            }
            line = async { match pasted.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                clear(interactive);
                let Some(line) = line else {
                    pasted = None;
                    if !tty {
                        // No terminal and nothing pasted: nobody is there
                        // to finish it, so a program is not kept waiting.
                        let _ = client.cancel_login(name).await;
                        return Err(Failure::login_required(format!(
                                "login required: no browser, no terminal and nothing pasted on stdin; run `mcpauthctl login {name}` in a terminal"
                            )));
                    }
                    // A terminal without stdin: keep waiting for the callback.
                    continue;
                };
                match client.complete_login(name, &line).await {
                    Ok(result) if result.ok => return Ok(output::login_line(name, &result)),
                    Ok(result) => return Err(failure(&result)),
                    Err(ClientError::Rpc { message, .. }) => {
                        paragraph(&format!("That did not work: {message}."));
                        let _ = write!(std::io::stderr(), "Paste the address again, or finish in the browser: ");
                        let _ = std::io::stderr().flush();
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            _ = &mut ctrl_c => {
                clear(interactive);
                let _ = client.cancel_login(name).await;
                return Err(Failure::failed("login cancelled"));
            }
            _ = tick.tick(), if interactive => {
                let remaining = (started.expires_at_unix_ms - now_ms()).max(0) / 1000;
                let _ = write!(
                    std::io::stderr(),
                    "\r\x1b[2K{} Waiting for the browser... (Ctrl-C to cancel; the link is valid for {}m{:02}s)",
                    spinner[frame % spinner.len()],
                    remaining / 60,
                    remaining % 60
                );
                let _ = std::io::stderr().flush();
                frame += 1;
            }
        }
    }
}

/// Shows a device login's code and waits for the daemon's result.
async fn device_login(
    mut client: Client,
    name: &str,
    device: pb::DeviceAuthorization,
    mut stream: mcpauth_client::LoginStream,
) -> Result<String, Failure> {
    paragraph(&format!(
        "Log in to {name} on any device: open this address and enter the code."
    ));
    stderr(&format!(
        "\n  {}\n\n  code: {}\n",
        device.verification_uri, device.user_code
    ));
    if !device.verification_uri_complete.is_empty() {
        paragraph("Or open this address, which carries the code:");
        stderr(&format!("\n{}\n", device.verification_uri_complete));
    }
    if device.joined {
        stderr("(joining the login already in progress)");
    }
    let interactive = std::io::stderr().is_terminal();
    if !interactive {
        stderr(&format!(
            "Waiting for the approval (the code expires {}; Ctrl-C to cancel)...",
            relative(device.expires_at_unix_ms, now_ms())
        ));
    }
    let spinner = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut frame = 0usize;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let clear = || {
        if interactive {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    };
    loop {
        tokio::select! {
            event = stream.next() => {
                clear();
                match event {
                    Some(Ok(pb::LoginEvent { kind: Some(pb::login_event::Kind::Finished(result)) })) => {
                        return if result.ok { Ok(output::login_line(name, &result)) } else { Err(failure(&result)) };
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(status)) => return Err(client.stream_error(status).into()),
                    None => {
                        return Err(Failure::unreachable("the daemon stopped before the login finished"));
                    }
                }
            }
            _ = &mut ctrl_c => {
                clear();
                let _ = client.cancel_login(name).await;
                return Err(Failure::failed("login cancelled"));
            }
            _ = tick.tick(), if interactive => {
                let remaining = (device.expires_at_unix_ms - now_ms()).max(0) / 1000;
                let _ = write!(
                    std::io::stderr(),
                    "\r\x1b[2K{} Waiting for the approval of code {}... (Ctrl-C to cancel; the code is valid for {}m{:02}s)",
                    spinner[frame % spinner.len()],
                    device.user_code,
                    remaining / 60,
                    remaining % 60
                );
                let _ = std::io::stderr().flush();
                frame += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn wraps_at_word_boundaries_and_keeps_long_words_whole() {
        assert_eq!(wrap("aa bb cc", 5), "aa bb\ncc");
        let url = "https://as.example/authorize?client_id=x&state=y";
        assert_eq!(
            wrap(&format!("open {url} now"), 10),
            format!("open\n{url}\nnow")
        );
        assert_eq!(wrap("one", 80), "one");
    }
}
