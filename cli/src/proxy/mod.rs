//! `mcpauthctl proxy NAME`: a stdio MCP server that bridges to the remote
//! server with the broker's tokens, for hosts that can only start stdio
//! servers (Cursor, VS Code, Claude Desktop, Gemini CLI, opencode, ...).
//!
//! Downstream (the host): newline-delimited JSON-RPC on stdin/stdout.
//! stdout carries protocol messages only; one line per problem goes to
//! stderr.
//!
//! Upstream (the server), the Streamable HTTP transport:
//! - every message is POSTed; the answer is JSON, an SSE stream, or 202;
//! - `Mcp-Session-Id` from the initialize answer is sent on every later
//!   request; a 404 for it means the session is gone, and the proxy
//!   initializes again (replaying the host's own initialize) and retries;
//! - `MCP-Protocol-Version` as negotiated, and the `Mcp-Method` /
//!   `Mcp-Name` headers 2026-07-28 servers require;
//! - after `notifications/initialized`, a GET stream for server-initiated
//!   messages (405: the server has none), resumed with `Last-Event-ID`,
//!   as is a POST's SSE stream that breaks before its answer;
//! - DELETE of the session when the host closes stdin;
//! - a server that answers the first POST with 400, 404 or 405 is tried as
//!   an HTTP+SSE (2024-11-05) server: GET for the `endpoint` event, then
//!   POST there, answers arriving on the stream.
//!
//! Auth: the token comes from the broker (held in memory, asked for again
//! when near expiry). On a 401 the proxy reports the rejected token (its
//! fingerprint and the `WWW-Authenticate`) and retries once with what the
//! broker returns; concurrent requests share that one recovery. A 403
//! `insufficient_scope` records the step-up and answers the request with an
//! error telling the person to run `mcpauthctl login NAME`, as does a
//! missing login, within seconds; the next request asks the broker again,
//! so a login made meanwhile works without restarting the host. Every
//! request of both transports, and the GET stream, meets a rejection
//! through that one recovery.
//!
//! The parts: `tokens` (the broker's token), `recovery` (the one answer
//! to a 401/403), `upstream` (the requests both transports make, and
//! their typed errors), `streamable` (Streamable HTTP), `legacy`
//! (HTTP+SSE), `sse` (the event-stream parser); here, the `Proxy` and
//! the host's side: stdin read and stdout written, one message a line.

mod legacy;
mod recovery;
mod sse;
mod streamable;
mod tokens;
mod upstream;

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use mcpauth_client::ConnectOptions;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::failure::Failure;
use tokens::{TokenError, Tokens};

/// The largest message accepted from the host or the server.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// A POST's whole exchange, answer streamed included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the response headers may take when the proxy opens something:
/// a GET stream (Streamable HTTP or HTTP+SSE, whose `endpoint` event too),
/// the session's initialize, and the notifications and answers a server
/// only acknowledges. A stream that is open may then stay idle for ever.
/// Requests a server may work on (a tool call answered with JSON) have
/// `REQUEST_TIMEOUT`. Tests shorten it with
/// `MCP_BROKER_TEST_PROXY_OPEN_MS`.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the DELETE that ends a session is waited for.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// JSON-RPC error codes (implementation-defined server errors).
const LOGIN_REQUIRED: i64 = -32001;
const UPSTREAM_FAILED: i64 = -32002;

struct Proxy {
    name: String,
    url: url::Url,
    http: reqwest::Client,
    /// `OPEN_TIMEOUT`, or what a test set.
    open_timeout: Duration,
    tokens: Tokens,
    out: mpsc::Sender<Vec<u8>>,
    session: std::sync::Mutex<Option<String>>,
    protocol: std::sync::Mutex<Option<String>>,
    /// The host's initialize request, replayed when a session is lost.
    initialize: std::sync::Mutex<Option<Value>>,
    /// The HTTP+SSE (2024-11-05) session, for a server of that transport.
    legacy: legacy::Session,
    /// Whether the GET stream of server-initiated messages was started.
    get_stream_started: std::sync::atomic::AtomicBool,
    /// Set once the host has closed stdin (or the proxy ends): from then
    /// on nothing reconnects and nothing is printed.
    closing: std::sync::atomic::AtomicBool,
    /// The background stream tasks, ended at close.
    background: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

fn problem(name: &str, line: &str) {
    eprintln!("mcpauthctl proxy {name}: {line}");
}

fn error_response(id: &Value, code: i64, message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": code, "message": message},
    }))
    .expect("JSON serialises")
}

impl Proxy {
    /// The server's URL as a line on stderr may show it: no query.
    fn shown(&self) -> String {
        mcpauth_client::display_url(self.url.as_str())
    }

    async fn emit(&self, bytes: Vec<u8>) {
        let _ = self.out.send(bytes).await;
    }

    async fn fail(&self, message: &Value, code: i64, text: &str) {
        problem(&self.name, text);
        if let Some(id) = message
            .get("id")
            .filter(|_| message.get("method").is_some())
        {
            self.emit(error_response(id, code, text)).await;
        }
    }

    /// Answers `message` with why no token could be had. A token for
    /// another URL was said on stderr already (once), as the proxy ends.
    async fn fail_token(&self, message: &Value, e: TokenError) {
        let (code, text) = e.rpc_error();
        if !matches!(e, TokenError::Moved(_)) {
            return self.fail(message, code, &text).await;
        }
        if let Some(id) = message
            .get("id")
            .filter(|_| message.get("method").is_some())
        {
            self.emit(error_response(id, code, &text)).await;
        }
    }
}

/// Runs the proxy until the host closes stdin.
pub async fn run(opts: ConnectOptions, name: String) -> Result<(), Failure> {
    let (out, lines) = mpsc::channel::<Vec<u8>>(256);
    let proxy = Arc::new(Proxy::new(opts, name, out).await?);
    let writer = tokio::spawn(write_host(lines));
    let mut tasks = tokio::task::JoinSet::new();
    read_host(&proxy, &mut tasks).await;
    // The host is gone: nothing reconnects from now on; what is in
    // flight finishes briefly, then the session ends.
    proxy.closing.store(true, SeqCst);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    proxy.close().await;
    drop(proxy);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    Ok(())
}

impl Proxy {
    /// The proxy for the server `name`, whose URL the broker gives (and
    /// so checks the name), with an HTTP client that never follows a
    /// redirect.
    async fn new(
        opts: ConnectOptions,
        name: String,
        out: mpsc::Sender<Vec<u8>>,
    ) -> Result<Self, Failure> {
        let mut client = mcpauth_client::connect(&opts).await?;
        let server = client.get_server(&name).await?;
        let url = url::Url::parse(&server.url).map_err(|e| {
            Failure::failed(format!("the configured URL of {name} is not valid: {e}"))
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Never follow a redirect with the token to somewhere else.
            .redirect(reqwest::redirect::Policy::none());
        let http = upstream::with_network(http, &mcpauth_proto::paths::config_path())
            .build()
            .map_err(|e| Failure::failed(format!("cannot start an HTTP client: {e}")))?;
        // Only tests set it, to wait less than OPEN_TIMEOUT.
        let open_timeout = std::env::var(mcpauth_proto::env::PROXY_OPEN_MS)
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(OPEN_TIMEOUT, Duration::from_millis);
        Ok(Proxy {
            tokens: Tokens::new(name.clone(), url.clone(), opts, client),
            name,
            url,
            http,
            open_timeout,
            out,
            session: Default::default(),
            protocol: Default::default(),
            initialize: Default::default(),
            legacy: Default::default(),
            get_stream_started: Default::default(),
            closing: Default::default(),
            background: Default::default(),
        })
    }
}

/// Writes the messages for the host on stdout, one line each.
async fn write_host(mut lines: mpsc::Receiver<Vec<u8>>) {
    let mut stdout = tokio::io::stdout();
    while let Some(mut line) = lines.recv().await {
        line.push(b'\n');
        if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() {
            break;
        }
    }
}

/// Reads the host's messages from stdin and forwards each, until stdin
/// ends, a message is too large, or the server moved. Initialize and
/// `notifications/initialized` go one at a time (nothing may race the
/// session's start); other messages go concurrently, in `tasks`.
async fn read_host(proxy: &Arc<Proxy>, tasks: &mut tokio::task::JoinSet<()>) {
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let mut limited = (&mut stdin).take(MAX_MESSAGE as u64 + 1);
        let read = tokio::select! {
            read = limited.read_until(b'\n', &mut buf) => read,
            // The server moved: nothing more is sent for this session.
            _ = proxy.tokens.ended.notified() => break,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if buf.len() > MAX_MESSAGE {
            problem(
                &proxy.name,
                "a message from the host is larger than 16 MiB; closing",
            );
            break;
        }
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let message: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => {
                proxy
                    .emit(error_response(&Value::Null, -32700, "parse error"))
                    .await;
                continue;
            }
        };
        let method = message
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_string);
        match method.as_deref() {
            // The session starts with initialize: nothing else may race it.
            Some("initialize") => proxy.forward(message).await,
            Some("notifications/initialized") => {
                proxy.forward(message).await;
                if proxy.legacy.endpoint.lock().unwrap().is_none() {
                    proxy.start_get_stream();
                }
            }
            _ => {
                let p = proxy.clone();
                tasks.spawn(async move { p.forward(message).await });
            }
        }
        while tasks.try_join_next().is_some() {}
    }
}
