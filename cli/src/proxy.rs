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
//! so a login made meanwhile works without restarting the host.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use mcpauth_client::{Client, ClientError, ConnectOptions, exit};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, mpsc};
use tokio_stream::StreamExt;

use crate::failure::Failure;

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
/// How long the broker may take to hand out a token.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(15);
/// Ask the broker again when the held token has less than this left.
const RENEW_MARGIN_MS: i64 = 60_000;
/// JSON-RPC error codes (implementation-defined server errors).
const LOGIN_REQUIRED: i64 = -32001;
const UPSTREAM_FAILED: i64 = -32002;

/// Why no token could be had.
#[derive(Debug)]
enum TokenError {
    /// A person must act (login, step-up): the message says how.
    Person(String),
    /// The broker or the AS is in trouble.
    Other(String),
    /// The broker's token is for another URL than this proxy's (the
    /// server's URL changed in config.toml): it is never sent here, and
    /// the session ends.
    Moved(String),
}

impl TokenError {
    fn rpc_error(&self) -> (i64, String) {
        match self {
            TokenError::Person(m) => (LOGIN_REQUIRED, m.clone()),
            TokenError::Other(m) | TokenError::Moved(m) => (UPSTREAM_FAILED, m.clone()),
        }
    }
}

/// A token and its expiry (Unix ms, 0 when unknown).
type Held = Option<(String, i64)>;

/// The broker's token for one server, held in memory.
struct Tokens {
    name: String,
    /// The URL requests go to: a token is taken only if the broker says it
    /// was issued for this URL.
    target: url::Url,
    /// Told when the proxy must end although the host has not closed
    /// stdin: the server's URL changed.
    ended: tokio::sync::Notify,
    moved: std::sync::atomic::AtomicBool,
    opts: ConnectOptions,
    /// The daemon connection and the token held. One lock: a recovery is
    /// one critical section.
    state: Mutex<(Option<Client>, Held)>,
}

fn now_ms() -> i64 {
    crate::output::now_ms()
}

impl Tokens {
    fn classify(&self, e: ClientError) -> TokenError {
        let name = &self.name;
        if e.exit_code() == exit::LOGIN_REQUIRED {
            // The next step is said once: the daemon's words carry it.
            let text = e.to_string();
            TokenError::Person(if text.contains("mcpauthctl login") {
                format!("mcpauth: {text}, then retry")
            } else {
                format!("mcpauth: {text}; run `mcpauthctl login {name}`, then retry")
            })
        } else {
            TokenError::Other(format!("mcpauth: no token for {name}: {e}"))
        }
    }

    /// A token from the broker, if it was issued for this proxy's URL.
    fn for_target(
        &self,
        reply: mcpauth_client::pb::TokenReply,
    ) -> Result<(String, i64), TokenError> {
        if mcpauth_client::same_server_url(&reply.server_url, self.target.as_str()) {
            return Ok((reply.access_token, reply.expires_at_unix_ms));
        }
        let text = format!(
            "mcpauth: {} is now configured for {}, not {} where this session runs, so its token is not sent here; restart this MCP server in the host",
            self.name,
            mcpauth_client::display_url(&reply.server_url),
            mcpauth_client::display_url(self.target.as_str()),
        );
        // Said once; the session ends.
        if !self.moved.swap(true, SeqCst) {
            problem(&self.name, &text);
            self.ended.notify_one();
        }
        Err(TokenError::Moved(text))
    }

    async fn client<'a>(&self, slot: &'a mut Option<Client>) -> Result<&'a mut Client, TokenError> {
        if slot.is_none() {
            let client = tokio::time::timeout(TOKEN_TIMEOUT, mcpauth_client::connect(&self.opts))
                .await
                .map_err(|_| TokenError::Other("mcpauth: the broker did not answer".into()))?
                .map_err(|e| self.classify(e))?;
            *slot = Some(client);
        }
        Ok(slot.as_mut().expect("just set"))
    }

    /// The token to send now.
    async fn current(&self) -> Result<String, TokenError> {
        let mut state = self.state.lock().await;
        if let Some((token, expires)) = &state.1
            && (*expires == 0 || expires - now_ms() > RENEW_MARGIN_MS)
        {
            return Ok(token.clone());
        }
        let (slot, held) = &mut *state;
        let client = self.client(slot).await?;
        let reply = tokio::time::timeout(TOKEN_TIMEOUT, client.get_token(&self.name, None)).await;
        match reply {
            Ok(Ok(reply)) => {
                let (token, expires) = self.for_target(reply)?;
                *held = Some((token.clone(), expires));
                Ok(token)
            }
            Ok(Err(e)) => {
                if e.exit_code() == exit::UNREACHABLE {
                    *slot = None;
                }
                *held = None;
                Err(self.classify(e))
            }
            Err(_) => {
                *slot = None;
                Err(TokenError::Other(
                    "mcpauth: the broker did not answer".into(),
                ))
            }
        }
    }

    /// The server rejected `token`: report it once, and get what replaces
    /// it. A request that finds the token already replaced by another's
    /// recovery takes the new one without reporting again.
    async fn rejected(&self, token: &str, status: u16, www: &str) -> Result<String, TokenError> {
        let mut state = self.state.lock().await;
        if let Some((held, _)) = &state.1
            && held != token
        {
            return Ok(held.clone());
        }
        let (slot, held) = &mut *state;
        let client = self.client(slot).await?;
        let reply = tokio::time::timeout(
            TOKEN_TIMEOUT,
            client.report_unauthorized(&self.name, token, u32::from(status), www),
        )
        .await;
        *held = None;
        match reply {
            Ok(Ok(reply)) => {
                let (token, expires) = self.for_target(reply)?;
                *held = Some((token.clone(), expires));
                Ok(token)
            }
            Ok(Err(e)) => {
                if e.exit_code() == exit::UNREACHABLE {
                    *slot = None;
                }
                Err(self.classify(e))
            }
            Err(_) => {
                *slot = None;
                Err(TokenError::Other(
                    "mcpauth: the broker did not answer".into(),
                ))
            }
        }
    }
}

/// What the upstream answered to one POST.
enum Answer {
    Accepted,
    Json(Vec<u8>),
    Sse(reqwest::Response),
    Status(u16, String),
}

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
    /// The POST endpoint of an HTTP+SSE (2024-11-05) server, once found.
    legacy: std::sync::Mutex<Option<url::Url>>,
    /// Bumped by every HTTP+SSE stream opened. Such a session lives as
    /// long as its stream: when the newest one ends, the session is lost
    /// and the next request starts another.
    legacy_generation: std::sync::atomic::AtomicU64,
    legacy_lost: std::sync::atomic::AtomicBool,
    /// One new HTTP+SSE session at a time, whatever the requests waiting.
    legacy_reopen: Mutex<()>,
    /// Told when the answer to a replayed initialize (which the host must
    /// not see: it has its own) arrives on the stream.
    legacy_replayed: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    get_stream_started: std::sync::atomic::AtomicBool,
    /// Set once the host has closed stdin (or the proxy ends): from then
    /// on nothing reconnects and nothing is printed.
    closing: std::sync::atomic::AtomicBool,
    /// The background stream tasks, ended at close.
    background: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

/// The id of an initialize the proxy replays for a new HTTP+SSE session.
const REPLAY_ID: &str = "mcpauthctl-reinitialize";

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

    fn headers(&self, message: Option<&Value>, token: &str) -> reqwest::header::HeaderMap {
        use reqwest::header::{HeaderMap, HeaderValue};
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
            h.insert("authorization", v);
        }
        if let Some(session) = self.session.lock().unwrap().clone()
            && let Ok(v) = HeaderValue::from_str(&session)
        {
            h.insert("mcp-session-id", v);
        }
        if let Some(version) = self.protocol.lock().unwrap().clone()
            && let Ok(v) = HeaderValue::from_str(&version)
        {
            h.insert("mcp-protocol-version", v);
        }
        if let Some(message) = message {
            if let Some(method) = message.get("method").and_then(Value::as_str)
                && let Ok(v) = HeaderValue::from_str(method)
            {
                h.insert("mcp-method", v);
            }
            let params = message.get("params");
            if let Some(name) = params
                .and_then(|p| p.get("name").or_else(|| p.get("uri")))
                .and_then(Value::as_str)
                && let Ok(v) = HeaderValue::from_str(name)
            {
                h.insert("mcp-name", v);
            }
        }
        h
    }

    /// Sends `request` and waits at most `limit` for the response headers.
    async fn open(
        &self,
        request: reqwest::RequestBuilder,
        limit: Duration,
    ) -> Result<reqwest::Response, String> {
        match tokio::time::timeout(limit, request.send()).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(format!("cannot reach {}: {}", self.shown(), short(e))),
            Err(_) => Err(format!(
                "{} sent no answer within {} s",
                self.shown(),
                limit.as_secs_f64()
            )),
        }
    }

    async fn post(&self, url: &url::Url, message: &Value, token: &str) -> Result<Answer, String> {
        let body = serde_json::to_vec(message).expect("JSON serialises");
        // The session's initialize, a notification or an answer: a server
        // acknowledges those at once. Other requests may take it a while.
        let opens = message.get("method").and_then(Value::as_str) == Some("initialize")
            || message.get("id").is_none()
            || message.get("method").is_none();
        let limit = if opens {
            self.open_timeout
        } else {
            REQUEST_TIMEOUT
        };
        let request = self
            .http
            .post(url.clone())
            .headers(self.headers(Some(message), token))
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .timeout(REQUEST_TIMEOUT)
            .body(body);
        let response = self.open(request, limit).await?;
        let status = response.status().as_u16();
        if let Some(session) = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        {
            *self.session.lock().unwrap() = Some(session.to_string());
        }
        let www = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .chars()
            .take(4096)
            .collect::<String>();
        match status {
            202 | 204 => Ok(Answer::Accepted),
            200..=299 => {
                let sse = response
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|c| c.starts_with("text/event-stream"));
                if sse {
                    return Ok(Answer::Sse(response));
                }
                let bytes = read_bounded(response).await?;
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    Ok(Answer::Accepted)
                } else {
                    Ok(Answer::Json(bytes))
                }
            }
            _ => Ok(Answer::Status(status, www)),
        }
    }

    /// Sends one message upstream and passes on what comes back.
    async fn forward(self: &Arc<Self>, message: Value) {
        let is_initialize = message.get("method").and_then(Value::as_str) == Some("initialize");
        if is_initialize {
            *self.initialize.lock().unwrap() = Some(message.clone());
        }
        let legacy = self.legacy.lock().unwrap().clone();
        if let Some(endpoint) = legacy {
            self.forward_legacy(&endpoint, message).await;
            return;
        }
        let mut token = match self.tokens.current().await {
            Ok(t) => t,
            Err(e) => return self.fail_token(&message, e).await,
        };
        // The host's initialize never reached the server (no login then,
        // answered with an error): start the session now, with the host's
        // own initialize, so a login heals the host without a restart.
        if !is_initialize
            && self.initialize.lock().unwrap().is_some()
            && self.protocol.lock().unwrap().is_none()
            && !self.reinitialize(&token).await
        {
            problem(
                &self.name,
                "the server did not accept the session's initialize",
            );
        }
        let mut recovered = false;
        let mut reinitialized = false;
        loop {
            let answer = match self.post(&self.url, &message, &token).await {
                Ok(a) => a,
                Err(e) => return self.fail(&message, UPSTREAM_FAILED, &e).await,
            };
            match answer {
                Answer::Accepted => return,
                Answer::Json(bytes) => {
                    if is_initialize {
                        self.note_initialize_result(&bytes);
                    }
                    return self.emit_json(bytes).await;
                }
                Answer::Sse(response) => {
                    let id = message.get("id").cloned();
                    return self.relay_post_stream(response, id, is_initialize).await;
                }
                Answer::Status(401, www) if !recovered => {
                    recovered = true;
                    token = match self.tokens.rejected(&token, 401, &www).await {
                        Ok(t) => t,
                        Err(e) => return self.fail_token(&message, e).await,
                    };
                }
                Answer::Status(401, _) => {
                    let text = format!(
                        "{} rejects the broker's token even after a refresh; check the server's configuration, or run `mcpauthctl login {}`",
                        self.shown(),
                        self.name
                    );
                    return self.fail(&message, LOGIN_REQUIRED, &text).await;
                }
                Answer::Status(403, www) if www.contains("insufficient_scope") => {
                    // Recorded as a step-up by the broker; a person decides.
                    let text = match self.tokens.rejected(&token, 403, &www).await {
                        Err(TokenError::Person(m)) => m,
                        _ => format!(
                            "mcpauth: {} needs more access; run `mcpauthctl login {}`",
                            self.name, self.name
                        ),
                    };
                    return self.fail(&message, LOGIN_REQUIRED, &text).await;
                }
                Answer::Status(404, _)
                    if !reinitialized
                        && !is_initialize
                        && self.session.lock().unwrap().is_some() =>
                {
                    // The session is gone: a new one, then this again.
                    reinitialized = true;
                    problem(
                        &self.name,
                        "the server ended the session; starting a new one",
                    );
                    if !self.reinitialize(&token).await {
                        return self
                            .fail(
                                &message,
                                UPSTREAM_FAILED,
                                "the server ended the session and a new one could not be started",
                            )
                            .await;
                    }
                }
                Answer::Status(400 | 404 | 405, _) if is_initialize => {
                    // Maybe an HTTP+SSE (2024-11-05) server.
                    match self.open_legacy(&token).await {
                        Ok(endpoint) => {
                            *self.legacy.lock().unwrap() = Some(endpoint.clone());
                            return self.forward_legacy(&endpoint, message).await;
                        }
                        Err(e) => {
                            let text = format!(
                                "{} refused initialize, and is not an HTTP+SSE server either ({e})",
                                self.shown()
                            );
                            return self.fail(&message, UPSTREAM_FAILED, &text).await;
                        }
                    }
                }
                Answer::Status(status, _) => {
                    let text = format!("{} answered HTTP {status}", self.shown());
                    return self.fail(&message, UPSTREAM_FAILED, &text).await;
                }
            }
        }
    }

    fn note_initialize_result(&self, bytes: &[u8]) {
        if let Ok(v) = serde_json::from_slice::<Value>(bytes)
            && let Some(version) = v.pointer("/result/protocolVersion").and_then(Value::as_str)
        {
            *self.protocol.lock().unwrap() = Some(version.to_string());
        }
    }

    async fn emit_json(&self, bytes: Vec<u8>) {
        // One line per message: a batch stays one line, as JSON-RPC allows.
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => self.emit(serde_json::to_vec(&v).expect("JSON")).await,
            Err(_) => problem(
                &self.name,
                "the server sent a body that is not JSON; dropped",
            ),
        }
    }

    /// Passes on a POST's SSE stream until its answer arrives; resumes it
    /// with `Last-Event-ID` if it breaks before.
    async fn relay_post_stream(
        self: &Arc<Self>,
        response: reqwest::Response,
        id: Option<Value>,
        is_initialize: bool,
    ) {
        let mut last_event = None;
        let mut response = Some(response);
        for attempt in 0..5 {
            let Some(r) = response.take() else { break };
            let answered = self
                .relay_events(r, id.as_ref(), &mut last_event, is_initialize)
                .await;
            if answered || id.is_none() {
                return;
            }
            // Broken before the answer: resume if the server gave ids.
            let Some(event_id) = last_event.clone() else {
                break;
            };
            tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
            match self.open_get(Some(&event_id)).await {
                Ok(Some(r)) => response = Some(r),
                _ => break,
            }
        }
        if let Some(id) = id {
            let text = "the server's stream ended before it answered";
            problem(&self.name, text);
            self.emit(error_response(&id, UPSTREAM_FAILED, text)).await;
        }
    }

    /// Relays events; returns whether the answer to `id` was among them.
    async fn relay_events(
        &self,
        response: reqwest::Response,
        id: Option<&Value>,
        last_event: &mut Option<String>,
        is_initialize: bool,
    ) -> bool {
        let mut answered = false;
        let mut parser = SseParser::default();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { break };
            for event in parser.feed(&chunk) {
                let Some(event) = event else {
                    problem(
                        &self.name,
                        "an event from the server was too large; dropped",
                    );
                    continue;
                };
                if let Some(event_id) = event.id {
                    *last_event = Some(event_id);
                }
                if event.data.is_empty() {
                    continue;
                }
                if let Ok(v) = serde_json::from_str::<Value>(&event.data) {
                    if id.is_some_and(|id| v.get("id") == Some(id) && v.get("method").is_none()) {
                        answered = true;
                        if is_initialize {
                            self.note_initialize_result(event.data.as_bytes());
                        }
                    }
                    self.emit(serde_json::to_vec(&v).expect("JSON")).await;
                }
            }
            if answered {
                return true;
            }
        }
        answered
    }

    /// GET the server's stream: `Ok(None)` when it offers none (405).
    async fn open_get(
        &self,
        last_event: Option<&str>,
    ) -> Result<Option<reqwest::Response>, String> {
        let mut recovered = false;
        let mut reinitialized = false;
        loop {
            let token = self.tokens.current().await.map_err(|e| e.rpc_error().1)?;
            let mut request = self
                .http
                .get(self.url.clone())
                .headers(self.headers(None, &token))
                .header("accept", "text/event-stream");
            if let Some(id) = last_event {
                request = request.header("last-event-id", id);
            }
            let response = self.open(request, self.open_timeout).await?;
            match response.status().as_u16() {
                200 => return Ok(Some(response)),
                405 => return Ok(None),
                401 if !recovered => {
                    recovered = true;
                    let www = response
                        .headers()
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    self.tokens
                        .rejected(&token, 401, &www)
                        .await
                        .map_err(|e| e.rpc_error().1)?;
                }
                // The server ended the session (some do on every
                // refresh): a new one, once, as for a POST.
                404 if !reinitialized
                    && !self.closing.load(SeqCst)
                    && self.session.lock().unwrap().is_some() =>
                {
                    reinitialized = true;
                    if !self.reinitialize(&token).await {
                        return Err(
                            "the server ended the session and a new one could not be started"
                                .into(),
                        );
                    }
                }
                status => return Err(format!("HTTP {status}")),
            }
        }
    }

    /// The stream of server-initiated messages, kept open (and resumed)
    /// while the session lives.
    fn start_get_stream(self: &Arc<Self>) {
        if self.get_stream_started.swap(true, SeqCst) {
            return;
        }
        let proxy = self.clone();
        let task = tokio::spawn(async move {
            let mut last_event: Option<String> = None;
            let mut delay = Duration::from_millis(500);
            loop {
                match proxy.open_get(last_event.as_deref()).await {
                    Ok(None) => return, // 405: no such stream
                    Ok(Some(response)) => {
                        delay = Duration::from_millis(500);
                        proxy
                            .relay_events(response, None, &mut last_event, false)
                            .await;
                    }
                    // The session is over: the proxy is ending.
                    Err(_) if proxy.tokens.moved.load(SeqCst) || proxy.closing.load(SeqCst) => {
                        return;
                    }
                    Err(e) => {
                        problem(
                            &proxy.name,
                            &format!("the server's event stream failed ({e}); retrying"),
                        );
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
                if proxy.closing.load(SeqCst) {
                    return;
                }
                tokio::time::sleep(delay).await;
            }
        });
        self.background.lock().unwrap().push(task.abort_handle());
    }

    /// A new session, replaying the host's initialize and initialized.
    async fn reinitialize(&self, token: &str) -> bool {
        *self.session.lock().unwrap() = None;
        let Some(init) = self.initialize.lock().unwrap().clone() else {
            return false;
        };
        match self.post(&self.url, &init, token).await {
            Ok(Answer::Json(bytes)) => self.note_initialize_result(&bytes),
            Ok(Answer::Sse(r)) => {
                // Drain it for the answer, which the host already has.
                let mut parser = SseParser::default();
                let mut stream = r.bytes_stream();
                'outer: while let Some(Ok(chunk)) = stream.next().await {
                    for event in parser.feed(&chunk).into_iter().flatten() {
                        if event.data.contains("\"result\"") {
                            self.note_initialize_result(event.data.as_bytes());
                            break 'outer;
                        }
                    }
                }
            }
            _ => return false,
        }
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        matches!(
            self.post(&self.url, &initialized, token).await,
            Ok(Answer::Accepted | Answer::Json(_))
        )
    }

    /// Connects to an HTTP+SSE (2024-11-05) server: GET the stream, wait
    /// for its `endpoint` event, and relay the rest of it to the host.
    async fn open_legacy(self: &Arc<Self>, token: &str) -> Result<url::Url, String> {
        let request = self
            .http
            .get(self.url.clone())
            .headers(self.headers(None, token))
            .header("accept", "text/event-stream");
        let response = self.open(request, self.open_timeout).await?;
        if response.status().as_u16() != 200 {
            return Err(format!("GET answered HTTP {}", response.status().as_u16()));
        }
        let mut stream = response.bytes_stream();
        let mut parser = SseParser::default();
        let endpoint = tokio::time::timeout(self.open_timeout, async {
            while let Some(Ok(chunk)) = stream.next().await {
                for event in parser.feed(&chunk).into_iter().flatten() {
                    if event.event.as_deref() == Some("endpoint") {
                        return Some(event.data);
                    }
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or("no endpoint event on the stream")?;
        let endpoint = self
            .url
            .join(endpoint.trim())
            .map_err(|e| format!("bad endpoint: {e}"))?;
        if endpoint.origin() != self.url.origin() {
            return Err(
                "the endpoint is on another origin; refusing to send the token there".into(),
            );
        }
        let generation = self.legacy_generation.fetch_add(1, SeqCst) + 1;
        self.legacy_lost.store(false, SeqCst);
        let proxy = self.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(chunk)) = stream.next().await {
                for event in parser.feed(&chunk).into_iter().flatten() {
                    if matches!(event.event.as_deref(), None | Some("message"))
                        && let Ok(v) = serde_json::from_str::<Value>(&event.data)
                    {
                        if v.get("id").and_then(Value::as_str) == Some(REPLAY_ID)
                            && v.get("method").is_none()
                        {
                            if let Some(tx) = proxy.legacy_replayed.lock().unwrap().take() {
                                let _ = tx.send(());
                            }
                            continue;
                        }
                        proxy.emit(serde_json::to_vec(&v).expect("JSON")).await;
                    }
                }
            }
            if proxy.legacy_generation.load(SeqCst) == generation && !proxy.closing.load(SeqCst) {
                proxy.legacy_lost.store(true, SeqCst);
                problem(
                    &proxy.name,
                    "the server closed its event stream; the next request starts a new session",
                );
            }
        });
        self.background.lock().unwrap().push(task.abort_handle());
        Ok(endpoint)
    }

    /// A new HTTP+SSE session after the last one was lost: a new stream,
    /// and (unless the host is initializing anyway) the host's initialize
    /// replayed on it, its answer kept from the host. `seen` is the stream
    /// generation the caller found lost; if another request already
    /// replaced it, that session is used.
    async fn reopen_legacy(self: &Arc<Self>, seen: u64, replay: bool) -> Result<url::Url, String> {
        let _one = self.legacy_reopen.lock().await;
        if self.legacy_generation.load(SeqCst) != seen
            && !self.legacy_lost.load(SeqCst)
            && let Some(endpoint) = self.legacy.lock().unwrap().clone()
        {
            return Ok(endpoint);
        }
        problem(
            &self.name,
            "the server's HTTP+SSE session is gone; starting a new one",
        );
        let token = self.tokens.current().await.map_err(|e| e.rpc_error().1)?;
        let endpoint = self.open_legacy(&token).await?;
        let init = self.initialize.lock().unwrap().clone();
        if let Some(mut init) = init.filter(|_| replay) {
            init["id"] = json!(REPLAY_ID);
            let (tx, rx) = tokio::sync::oneshot::channel();
            *self.legacy_replayed.lock().unwrap() = Some(tx);
            match self.post(&endpoint, &init, &token).await? {
                Answer::Status(status, _) => {
                    return Err(format!("its initialize answered HTTP {status}"));
                }
                Answer::Accepted | Answer::Json(_) | Answer::Sse(_) => {}
            }
            tokio::time::timeout(Duration::from_secs(10), rx)
                .await
                .map_err(|_| "no answer to initialize on its stream".to_string())?
                .map_err(|_| "its stream closed before answering initialize".to_string())?;
            let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
            self.post(&endpoint, &initialized, &token).await?;
        }
        *self.legacy.lock().unwrap() = Some(endpoint.clone());
        Ok(endpoint)
    }

    async fn forward_legacy(self: &Arc<Self>, endpoint: &url::Url, message: Value) {
        let is_initialize = message.get("method").and_then(Value::as_str) == Some("initialize");
        let mut endpoint = endpoint.clone();
        let mut recovered = false;
        let mut reopened = false;
        // The stream generation found lost, when a new session is due.
        let mut reopen_from: Option<u64> = None;
        loop {
            if !reopened && reopen_from.is_none() && self.legacy_lost.load(SeqCst) {
                reopen_from = Some(self.legacy_generation.load(SeqCst));
            }
            if let Some(seen) = reopen_from.take() {
                reopened = true;
                match self.reopen_legacy(seen, !is_initialize).await {
                    Ok(e) => endpoint = e,
                    Err(e) => {
                        let text = format!(
                            "the server ended its session and a new one could not be started ({e})"
                        );
                        return self.fail(&message, UPSTREAM_FAILED, &text).await;
                    }
                }
            }
            let generation = self.legacy_generation.load(SeqCst);
            let token = match self.tokens.current().await {
                Ok(t) => t,
                Err(e) => return self.fail_token(&message, e).await,
            };
            match self.post(&endpoint, &message, &token).await {
                Ok(Answer::Accepted | Answer::Json(_) | Answer::Sse(_)) => return,
                Ok(Answer::Status(401, www)) if !recovered => {
                    recovered = true;
                    if let Err(e) = self.tokens.rejected(&token, 401, &www).await {
                        return self.fail_token(&message, e).await;
                    }
                }
                // The session ended at the server, its stream maybe not
                // yet: a new session, then this again.
                Ok(Answer::Status(404, _)) if !reopened => reopen_from = Some(generation),
                Ok(Answer::Status(status, _)) => {
                    let text = format!(
                        "{} answered HTTP {status}",
                        mcpauth_client::display_url(endpoint.as_str())
                    );
                    return self.fail(&message, UPSTREAM_FAILED, &text).await;
                }
                Err(e) => return self.fail(&message, UPSTREAM_FAILED, &e).await,
            }
        }
    }

    /// Ends the session at the server: the streams stop first (nothing
    /// reconnects with the deleted session), then one DELETE, waited for
    /// a second at most.
    async fn close(&self) {
        self.closing.store(true, SeqCst);
        for task in self.background.lock().unwrap().drain(..) {
            task.abort();
        }
        if self.session.lock().unwrap().is_none() {
            return;
        }
        let Ok(token) = self.tokens.current().await else {
            return;
        };
        let _ = self
            .http
            .delete(self.url.clone())
            .headers(self.headers(None, &token))
            .timeout(CLOSE_TIMEOUT)
            .send()
            .await;
    }
}

/// The innermost cause of a request's failure, in 200 characters at most,
/// without the URL (whose query may carry a credential).
fn short(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text = s.to_string();
        source = s.source();
    }
    text.chars().take(200).collect()
}

async fn read_bounded(response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(short)?;
        if body.len() + chunk.len() > MAX_MESSAGE {
            return Err("the server's answer is larger than 16 MiB".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// One server-sent event.
#[derive(Debug, Default, PartialEq)]
struct SseEvent {
    event: Option<String>,
    data: String,
    id: Option<String>,
}

/// An incremental `text/event-stream` parser, bounded per event.
#[derive(Default)]
struct SseParser {
    line: Vec<u8>,
    current: SseEvent,
    data_lines: usize,
    oversized: bool,
}

impl SseParser {
    /// Feeds bytes; returns the completed events (`None`: one that was too
    /// large and was dropped).
    fn feed(&mut self, bytes: &[u8]) -> Vec<Option<SseEvent>> {
        let mut out = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                if self.line.len() < MAX_MESSAGE {
                    self.line.push(b);
                } else {
                    self.oversized = true;
                }
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.is_empty() {
                let event = std::mem::take(&mut self.current);
                let had_data = self.data_lines > 0 || event.id.is_some();
                self.data_lines = 0;
                if std::mem::take(&mut self.oversized) {
                    out.push(None);
                } else if had_data {
                    out.push(Some(event));
                }
                continue;
            }
            let line = String::from_utf8_lossy(&line);
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            match field {
                "data" => {
                    // The whole event counts: its data lines and the
                    // newlines that join them. Once over, nothing more is
                    // kept until the blank line drops it.
                    let separator = usize::from(self.data_lines > 0);
                    if self.oversized
                        || self.current.data.len() + separator + value.len() > MAX_MESSAGE
                    {
                        self.oversized = true;
                        self.current.data.clear();
                        self.current.data.shrink_to(0);
                    } else {
                        if separator == 1 {
                            self.current.data.push('\n');
                        }
                        self.current.data.push_str(value);
                    }
                    self.data_lines = self.data_lines.saturating_add(1);
                }
                "event" => self.current.event = Some(value.to_string()),
                "id" if !value.contains('\0') => self.current.id = Some(value.to_string()),
                _ => {} // comments (":keepalive"), retry, unknown fields
            }
        }
        out
    }
}

/// config.toml's top-level `proxy` and `ca_file`, as the daemon uses them
/// (hosts in `NO_PROXY` excepted). The daemon validates the file; what
/// cannot be used here is left out, never fatal, and a proxy's URL (which
/// may hold a password) is never shown.
fn with_network(
    mut builder: reqwest::ClientBuilder,
    config: &std::path::Path,
) -> reqwest::ClientBuilder {
    let Ok(text) = std::fs::read_to_string(config) else {
        return builder;
    };
    let Ok(doc) = text.parse::<toml_edit::DocumentMut>() else {
        return builder;
    };
    if let Some(proxy) = doc.get("proxy").and_then(|v| v.as_str())
        && let Ok(proxy) = reqwest::Proxy::all(proxy)
    {
        builder = builder.proxy(proxy.no_proxy(reqwest::NoProxy::from_env()));
    }
    if let Some(path) = doc.get("ca_file").and_then(|v| v.as_str()) {
        let path = match path.strip_prefix("~/") {
            Some(rest) => mcpauth_proto::paths::home_dir()
                .unwrap_or_default()
                .join(rest),
            None => std::path::PathBuf::from(path),
        };
        let certificates = std::fs::read(&path)
            .ok()
            .and_then(|pem| reqwest::Certificate::from_pem_bundle(&pem).ok())
            .unwrap_or_default();
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
}

/// Runs the proxy until the host closes stdin.
pub async fn run(opts: ConnectOptions, name: String) -> Result<(), Failure> {
    // The server's URL, from the broker (which also checks the name).
    let mut client = mcpauth_client::connect(&opts).await?;
    let server = client.get_server(&name).await?;
    let url = url::Url::parse(&server.url)
        .map_err(|e| Failure::failed(format!("the configured URL of {name} is not valid: {e}")))?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        // Never follow a redirect with the token to somewhere else.
        .redirect(reqwest::redirect::Policy::none());
    let http = with_network(http, &mcpauth_proto::paths::config_path())
        .build()
        .map_err(|e| Failure::failed(format!("cannot start an HTTP client: {e}")))?;
    let (out, mut lines) = mpsc::channel::<Vec<u8>>(256);
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(mut line) = lines.recv().await {
            line.push(b'\n');
            if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    // Only tests set it, to wait less than OPEN_TIMEOUT.
    let open_timeout = std::env::var(mcpauth_proto::env::PROXY_OPEN_MS)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(OPEN_TIMEOUT, Duration::from_millis);
    let proxy = Arc::new(Proxy {
        name: name.clone(),
        url: url.clone(),
        http,
        open_timeout,
        tokens: Tokens {
            name: name.clone(),
            target: url.clone(),
            ended: Default::default(),
            moved: Default::default(),
            opts,
            state: Mutex::new((Some(client), None)),
        },
        out,
        session: Default::default(),
        protocol: Default::default(),
        initialize: Default::default(),
        legacy: Default::default(),
        legacy_generation: Default::default(),
        legacy_lost: Default::default(),
        legacy_reopen: Default::default(),
        legacy_replayed: Default::default(),
        get_stream_started: Default::default(),
        closing: Default::default(),
        background: Default::default(),
    });

    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut tasks = tokio::task::JoinSet::new();
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
                &name,
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
                if proxy.legacy.lock().unwrap().is_none() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_across_chunks_with_ids_comments_and_crlf() {
        let mut p = SseParser::default();
        let mut events = p.feed(b": keepalive\n\nid: 1\ndata: {\"a\"");
        assert!(events.is_empty());
        events.extend(p.feed(b":1}\r\n\r\nevent: endpoint\ndata: /messages?s=x\n\n"));
        assert_eq!(
            events,
            vec![
                Some(SseEvent {
                    event: None,
                    data: "{\"a\":1}".into(),
                    id: Some("1".into())
                }),
                Some(SseEvent {
                    event: Some("endpoint".into()),
                    data: "/messages?s=x".into(),
                    id: None
                }),
            ]
        );
        let events = p.feed(b"data: a\ndata: b\n\n");
        assert_eq!(events[0].as_ref().unwrap().data, "a\nb");
    }

    #[test]
    fn a_flood_of_empty_data_lines_stays_bounded_and_is_dropped() {
        let mut p = SseParser::default();
        // 20 million empty data lines and no blank line: their joining
        // newlines alone are more than MAX_MESSAGE.
        let chunk = b"data:\n".repeat(1 << 20);
        for _ in 0..20 {
            assert!(p.feed(&chunk).is_empty());
            assert!(p.current.data.len() <= MAX_MESSAGE);
        }
        assert!(p.current.data.capacity() <= MAX_MESSAGE);
        // The event ends: it was too large, so it is dropped.
        assert_eq!(p.feed(b"\n"), vec![None]);
        // And the next one is whole again.
        let events = p.feed(b"data: {}\n\n");
        assert_eq!(events[0].as_ref().unwrap().data, "{}");
    }

    #[test]
    fn an_event_exactly_at_the_limit_is_kept_and_one_byte_more_is_not() {
        let mut p = SseParser::default();
        let half = "x".repeat(MAX_MESSAGE / 2);
        // Two halves and their newline: one byte over.
        let mut input = format!("data: {half}\ndata: {half}\n\n").into_bytes();
        assert_eq!(p.feed(&input), vec![None]);
        // One byte shorter: exactly the limit.
        input = format!("data: {half}\ndata: {}\n\n", &half[1..]).into_bytes();
        let events = p.feed(&input);
        assert_eq!(events[0].as_ref().unwrap().data.len(), MAX_MESSAGE);
    }
}
