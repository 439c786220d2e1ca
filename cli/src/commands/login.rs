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
    say_if_logged_in(&mut client, &name).await;
    let request = pb::LoginRequest {
        server: name.clone(),
        scopes: args.scopes.clone(),
        method: method(&args).into(),
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
    let pasted = show_url(&mut client, &name, &started, args.no_browser).await?;
    // The spinner only runs while nobody is typing.
    let tty = std::io::stderr().is_terminal();
    let spinner = tty && pasted.is_none();
    if !spinner && pasted.is_none() {
        stderr("Waiting for the browser (Ctrl-C to cancel)...");
    }
    let waiting = Waiting {
        what: "the browser".into(),
        valid: "link",
        expires_at_unix_ms: started.expires_at_unix_ms,
    };
    wait(
        client,
        &name,
        stream,
        pasted,
        tty,
        Spinner::new(spinner, waiting),
    )
    .await
}

/// Logging in again is allowed (another account, more scope), but not
/// silently: the person hears what they already have.
async fn say_if_logged_in(client: &mut Client, name: &str) {
    if let Ok(server) = client.get_server(name).await
        && server.state == pb::AuthState::Authorized as i32
    {
        let expiry = match server.token_expires_at_unix_ms {
            0 => "expiry unknown".to_string(),
            at => format!("token expires {}", relative(at, now_ms())),
        };
        paragraph(&format!(
            "{name} is already logged in ({expiry}). Logging in again replaces that login once this one completes; Ctrl-C keeps it."
        ));
    }
}

/// How to log in. With neither a browser nor a terminal, nobody can open
/// the URL here or paste an address: a device code, shown to whoever
/// reads the output, is the one way left (when the AS offers it).
fn method(args: &LoginArgs) -> pb::LoginMethod {
    if args.device {
        pb::LoginMethod::Device
    } else if !args.no_browser && browser::is_headless() && !std::io::stdin().is_terminal() {
        pb::LoginMethod::DeviceIfOffered
    } else {
        pb::LoginMethod::Browser
    }
}

/// Shows the authorization URL and opens it, or, with no browser here,
/// says how to finish elsewhere. Returns the pasted lines to read when
/// the person may paste the final address. Fails (login required) when
/// nobody here can act on it.
async fn show_url(
    client: &mut Client,
    name: &str,
    started: &pb::LoginStarted,
    no_browser: bool,
) -> Result<Option<tokio::sync::mpsc::Receiver<String>>, Failure> {
    // The URL on a line of its own, unindented, so it copies whole however
    // the terminal wraps it.
    paragraph(&format!(
        "Log in to {name} by opening this URL in a browser:"
    ));
    stderr(&format!("\n{}\n", started.authorization_url));
    if started.joined {
        stderr("(joining the login already in progress)");
    }
    let headless = no_browser || browser::is_headless();
    if !headless {
        open_browser(client, name, &started.authorization_url).await?;
        return Ok(None);
    }
    let elsewhere = client
        .status()
        .await
        .is_ok_and(|s| daemon_elsewhere(&s, client.socket()));
    if elsewhere {
        // Over a forwarded socket: the daemon, and its callback, are on
        // the machine the socket comes from.
        paragraph(
            "mcpauthd runs on another machine (its socket is forwarded here): open the URL in a browser on that machine, where its callback listens; no tunnel is needed.",
        );
        paragraph(&format!(
            "Or open it anywhere and paste below the address your browser ends up on (it starts with {}).",
            started.redirect_uri
        ));
    } else {
        say_how_to_forward(name, started, no_browser);
    }
    if std::io::stdin().is_terminal() {
        // A prompt on its own line; nothing else is written while the
        // person types.
        let _ = write!(std::io::stderr(), "\nPaste the address and press Enter: ");
        let _ = std::io::stderr().flush();
    }
    Ok(Some(paste_lines()))
}

/// Headless, with the daemon here: forward the callback port, or paste
/// the final address (or use a device code, where offered).
fn say_how_to_forward(name: &str, started: &pb::LoginStarted, no_browser: bool) {
    let port = started.callback_port;
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "this-host".into());
    if !no_browser {
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
}

/// Opens the URL in a browser. When none opens and there is neither a
/// terminal nor stdin to wait with, the login is cancelled.
async fn open_browser(client: &mut Client, name: &str, url: &str) -> Result<(), Failure> {
    match browser::open(url) {
        Ok(program) => stderr(&format!("Opened it with {program}.")),
        Err(e) => {
            stderr(&format!(
                "Could not open a browser ({e}); open the URL yourself."
            ));
            if !std::io::stdin().is_terminal() && !std::io::stderr().is_terminal() {
                let _ = client.cancel_login(name).await;
                return Err(Failure::login_required(format!(
                    "login required: no browser and no terminal here; run `mcpauthctl login {name}` in a terminal"
                )));
            }
        }
    }
    Ok(())
}

/// Shows a device login's code and waits for the daemon's result.
async fn device_login(
    client: Client,
    name: &str,
    device: pb::DeviceAuthorization,
    stream: mcpauth_client::LoginStream,
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
    let waiting = Waiting {
        what: format!("the approval of code {}", device.user_code),
        valid: "code",
        expires_at_unix_ms: device.expires_at_unix_ms,
    };
    let spinner = Spinner::new(interactive, waiting);
    wait(client, name, stream, None, interactive, spinner).await
}

/// What a login waits for, as its spinner line says it.
struct Waiting {
    /// "the browser", "the approval of code X".
    what: String,
    /// What expires: "link", "code".
    valid: &'static str,
    expires_at_unix_ms: i64,
}

/// The spinner line on a terminal while a login is waited for.
struct Spinner {
    on: bool,
    frame: usize,
    tick: tokio::time::Interval,
    waiting: Waiting,
}

impl Spinner {
    const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

    fn new(on: bool, waiting: Waiting) -> Self {
        Self {
            on,
            frame: 0,
            tick: tokio::time::interval(Duration::from_millis(100)),
            waiting,
        }
    }

    fn clear(&self) {
        if self.on {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }

    fn draw(&mut self) {
        let remaining = (self.waiting.expires_at_unix_ms - now_ms()).max(0) / 1000;
        let _ = write!(
            std::io::stderr(),
            "\r\x1b[2K{} Waiting for {}... (Ctrl-C to cancel; the {} is valid for {}m{:02}s)",
            Self::FRAMES[self.frame % Self::FRAMES.len()],
            self.waiting.what,
            self.waiting.valid,
            remaining / 60,
            remaining % 60
        );
        let _ = std::io::stderr().flush();
        self.frame += 1;
    }
}

/// Waits for the end of the login: the daemon's result, an address
/// pasted on stdin (when `pasted`), or Ctrl-C, which cancels it. `tty`:
/// whether someone at a terminal can still finish it when stdin ends.
async fn wait(
    mut client: Client,
    name: &str,
    mut stream: mcpauth_client::LoginStream,
    mut pasted: Option<tokio::sync::mpsc::Receiver<String>>,
    tty: bool,
    mut spinner: Spinner,
) -> Result<String, Failure> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            event = stream.next() => {
                spinner.clear();
                let event = event.map(|e| e.map_err(|status| client.stream_error(status)));
                if let Some(end) = ended(name, event) {
                    return end;
                }
            }
            line = async { match pasted.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                spinner.clear();
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
                if let Some(end) = complete(&mut client, name, &line).await {
                    return end;
                }
            }
            _ = &mut ctrl_c => {
                spinner.clear();
                let _ = client.cancel_login(name).await;
                return Err(Failure::failed("login cancelled"));
            }
            _ = spinner.tick.tick(), if spinner.on => spinner.draw(),
        }
    }
}

/// How the login ended, if this event from the daemon ends it.
fn ended(
    name: &str,
    event: Option<Result<pb::LoginEvent, ClientError>>,
) -> Option<Result<String, Failure>> {
    match event {
        Some(Ok(pb::LoginEvent {
            kind: Some(pb::login_event::Kind::Finished(result)),
        })) => Some(if result.ok {
            Ok(output::login_line(name, &result))
        } else {
            Err(failure(&result))
        }),
        Some(Ok(_)) => None,
        Some(Err(e)) => Some(Err(e.into())),
        None => Some(Err(Failure::unreachable(
            "the daemon stopped before the login finished",
        ))),
    }
}

/// Completes the login with a pasted address; `None` when the daemon
/// refused it and the person may paste again.
async fn complete(client: &mut Client, name: &str, line: &str) -> Option<Result<String, Failure>> {
    match client.complete_login(name, line).await {
        Ok(result) if result.ok => Some(Ok(output::login_line(name, &result))),
        Ok(result) => Some(Err(failure(&result))),
        Err(ClientError::Rpc { message, .. }) => {
            paragraph(&format!("That did not work: {message}."));
            let _ = write!(
                std::io::stderr(),
                "Paste the address again, or finish in the browser: "
            );
            let _ = std::io::stderr().flush();
            None
        }
        Err(e) => Some(Err(e.into())),
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
