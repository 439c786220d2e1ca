//! A test MCP server on the Streamable HTTP transport, protected by a test
//! authorization server's tokens, for the proxy tests.
//!
//! It speaks just enough MCP to exercise a client transport: `initialize`
//! (a session id), `tools/list` (JSON), `tools/call` of `sse` (an SSE
//! answer with a notification first), of `broken` (an SSE answer whose
//! stream breaks before the result, which is served on a resumed GET with
//! `Last-Event-ID`) and of `admin` (403 `insufficient_scope`), `ping`, a GET
//! stream for server-initiated messages ([`McpServer::push`]), and DELETE.
//! With `legacy`, it is an HTTP+SSE (2024-11-05) server instead (its
//! `admin` a 403 `insufficient_scope` too). It records
//! what it saw so tests can assert on headers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

pub type Validator = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct McpSeen {
    pub method: String,
    pub path: String,
    /// The JSON-RPC method, if any.
    pub rpc: Option<String>,
    pub bearer: Option<String>,
    pub session: Option<String>,
    pub protocol_version: Option<String>,
    pub mcp_method: Option<String>,
    pub mcp_name: Option<String>,
    pub last_event_id: Option<String>,
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, bool>,
    /// Events kept for resumption: (id, data).
    events: Vec<(u64, String)>,
    next_event: u64,
    seen: Vec<McpSeen>,
    deleted: Vec<String>,
    /// Legacy sessions: where their answers go.
    legacy: HashMap<String, mpsc::Sender<String>>,
}

#[derive(Clone)]
struct App {
    inner: Arc<Mutex<Inner>>,
    validator: Validator,
    issuer: String,
    base: String,
    legacy: bool,
    pushes: broadcast::Sender<String>,
    hang: Arc<Mutex<Hang>>,
}

/// Which requests with a token the server accepts and then never answers
/// (no response headers, ever).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Hang {
    #[default]
    Nothing,
    /// Every request.
    Everything,
    /// GET requests (the streams).
    Gets,
}

pub struct McpServer {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    pushes: broadcast::Sender<String>,
    hang: Arc<Mutex<Hang>>,
    _addr: SocketAddr,
}

impl McpServer {
    /// Serves on 127.0.0.1; tokens are checked by `validator`, and the
    /// protected resource metadata names `issuer`.
    pub async fn start(issuer: &str, validator: Validator, legacy: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let base = format!("http://127.0.0.1:{}", addr.port());
        let inner = Arc::new(Mutex::new(Inner::default()));
        let (pushes, _) = broadcast::channel(64);
        let app = App {
            inner: inner.clone(),
            validator,
            issuer: issuer.to_string(),
            base: base.clone(),
            legacy,
            pushes: pushes.clone(),
            hang: Default::default(),
        };
        let hang = app.hang.clone();
        let router = Router::new().fallback(handle).with_state(app);
        tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self {
            url: format!("{base}/mcp"),
            inner,
            pushes,
            hang,
            _addr: addr,
        }
    }

    /// Sends a server-initiated message on the GET streams.
    pub fn push(&self, message: Value) {
        let data = message.to_string();
        let _ = self.pushes.send(data);
    }

    pub fn seen(&self) -> Vec<McpSeen> {
        self.inner.lock().unwrap().seen.clone()
    }

    /// Sessions ended by a DELETE.
    pub fn deleted(&self) -> Vec<String> {
        self.inner.lock().unwrap().deleted.clone()
    }

    /// Ends every HTTP+SSE session and its stream, as a restarted server
    /// would.
    pub fn drop_legacy_streams(&self) {
        self.inner.lock().unwrap().legacy.clear();
    }

    /// From now on, accepts the requests `what` names and never answers.
    pub fn hang(&self, what: Hang) {
        *self.hang.lock().unwrap() = what;
    }

    /// Forgets every session, as a restarted server would.
    pub fn drop_sessions(&self) {
        self.inner.lock().unwrap().sessions.clear();
    }
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn json_response(status: StatusCode, value: Value, session: Option<&str>) -> Response {
    let mut r = (
        status,
        [("content-type", "application/json")],
        value.to_string(),
    )
        .into_response();
    if let Some(s) = session {
        r.headers_mut().insert("mcp-session-id", s.parse().unwrap());
    }
    r
}

fn sse_response(rx: mpsc::Receiver<String>) -> Response {
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let stream = tokio_stream::StreamExt::map(stream, |s| Ok::<_, Infallible>(Bytes::from(s)));
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    r
}

fn event(id: Option<u64>, data: &str) -> String {
    match id {
        Some(id) => format!("id: {id}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

async fn handle(State(app): State<App>, request: Request<Body>) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let bytes = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let message: Option<Value> = serde_json::from_slice(&bytes).ok();
    let h = &parts.headers;
    let bearer =
        header(h, "authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_string));
    let mut seen = McpSeen {
        method: parts.method.to_string(),
        path: path.clone(),
        rpc: message
            .as_ref()
            .and_then(|m| m.get("method"))
            .and_then(Value::as_str)
            .map(str::to_string),
        bearer: bearer.clone(),
        session: header(h, "mcp-session-id"),
        protocol_version: header(h, "mcp-protocol-version"),
        mcp_method: header(h, "mcp-method"),
        mcp_name: header(h, "mcp-name"),
        last_event_id: header(h, "last-event-id"),
        status: 0,
    };
    let hang = *app.hang.lock().unwrap();
    if bearer.is_some()
        && (hang == Hang::Everything || (hang == Hang::Gets && parts.method == Method::GET))
    {
        app.inner.lock().unwrap().seen.push(seen);
        return std::future::pending().await;
    }
    let response = respond(&app, &parts.method, &path, h, message, bearer).await;
    seen.status = response.status().as_u16();
    app.inner.lock().unwrap().seen.push(seen);
    response
}

async fn respond(
    app: &App,
    method: &Method,
    path: &str,
    h: &HeaderMap,
    message: Option<Value>,
    bearer: Option<String>,
) -> Response {
    if path == "/.well-known/oauth-protected-resource/mcp" {
        return json_response(
            StatusCode::OK,
            json!({"resource": format!("{}/mcp", app.base), "authorization_servers": [app.issuer]}),
            None,
        );
    }
    if !bearer.as_deref().is_some_and(|t| (app.validator)(t)) {
        let challenge = format!(
            "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
            app.base
        );
        return (StatusCode::UNAUTHORIZED, [("www-authenticate", challenge)]).into_response();
    }
    if app.legacy {
        return legacy(app, method, path, message).await;
    }
    if path != "/mcp" {
        return StatusCode::NOT_FOUND.into_response();
    }
    let session = header(h, "mcp-session-id");
    if *method == Method::DELETE {
        let mut inner = app.inner.lock().unwrap();
        if let Some(s) = session {
            inner.sessions.remove(&s);
            inner.deleted.push(s);
        }
        return StatusCode::OK.into_response();
    }
    if *method == Method::GET {
        let known = session
            .as_ref()
            .is_some_and(|s| app.inner.lock().unwrap().sessions.contains_key(s));
        if !known {
            return StatusCode::NOT_FOUND.into_response();
        }
        let (tx, rx) = mpsc::channel(64);
        // Resumption: what came after the last event the client saw.
        if let Some(last) = header(h, "last-event-id").and_then(|v| v.parse::<u64>().ok()) {
            let replay: Vec<(u64, String)> = app
                .inner
                .lock()
                .unwrap()
                .events
                .iter()
                .filter(|(id, _)| *id > last)
                .cloned()
                .collect();
            for (id, data) in replay {
                let _ = tx.try_send(event(Some(id), &data));
            }
        }
        let mut pushes = app.pushes.subscribe();
        let inner = app.inner.clone();
        tokio::spawn(async move {
            while let Ok(data) = pushes.recv().await {
                let id = {
                    let mut i = inner.lock().unwrap();
                    i.next_event += 1;
                    let id = i.next_event;
                    i.events.push((id, data.clone()));
                    id
                };
                if tx.send(event(Some(id), &data)).await.is_err() {
                    break;
                }
            }
        });
        return sse_response(rx);
    }
    let Some(message) = message else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let rpc = message.get("method").and_then(Value::as_str).unwrap_or("");
    let id = message.get("id").cloned();
    if rpc == "initialize" {
        let session = format!("session-{}", rand::random::<u32>());
        app.inner
            .lock()
            .unwrap()
            .sessions
            .insert(session.clone(), true);
        let result = json!({
            "jsonrpc": "2.0", "id": id,
            "result": {
                "protocolVersion": "2025-06-18",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "mcpauth-test-server", "version": "1"}
            }
        });
        return json_response(StatusCode::OK, result, Some(&session));
    }
    match session {
        None => return StatusCode::BAD_REQUEST.into_response(),
        Some(s) if !app.inner.lock().unwrap().sessions.contains_key(&s) => {
            return StatusCode::NOT_FOUND.into_response();
        }
        Some(_) => {}
    }
    // Notifications and responses: accepted.
    let Some(id) = id.filter(|_| !rpc.is_empty()) else {
        return StatusCode::ACCEPTED.into_response();
    };
    let tool = message
        .pointer("/params/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    match (rpc, tool) {
        ("tools/list", _) => json_response(
            StatusCode::OK,
            json!({"jsonrpc": "2.0", "id": id, "result": {"tools": [
                {"name": "sse", "inputSchema": {"type": "object"}},
                {"name": "broken", "inputSchema": {"type": "object"}},
                {"name": "admin", "inputSchema": {"type": "object"}}
            ]}}),
            None,
        ),
        ("tools/call", "admin") => (
            StatusCode::FORBIDDEN,
            [(
                "www-authenticate",
                "Bearer error=\"insufficient_scope\", scope=\"mcp:admin\"".to_string(),
            )],
        )
            .into_response(),
        ("tools/call", "sse") | ("tools/call", "broken") => {
            let (tx, rx) = mpsc::channel(8);
            let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                                  "params": {"progressToken": 1, "progress": 1}})
            .to_string();
            let result = json!({"jsonrpc": "2.0", "id": id,
                                "result": {"content": [{"type": "text", "text": format!("{tool} done")}]}})
            .to_string();
            let mut inner = app.inner.lock().unwrap();
            inner.next_event += 1;
            let first = inner.next_event;
            inner.events.push((first, progress.clone()));
            inner.next_event += 1;
            let second = inner.next_event;
            inner.events.push((second, result.clone()));
            let _ = tx.try_send(event(Some(first), &progress));
            if tool == "sse" {
                let _ = tx.try_send(event(Some(second), &result));
            }
            // `broken`: the stream ends here; the result waits for a GET
            // with Last-Event-ID.
            drop(tx);
            sse_response(rx)
        }
        ("ping", _) => json_response(
            StatusCode::OK,
            json!({"jsonrpc": "2.0", "id": id, "result": {}}),
            None,
        ),
        _ => json_response(
            StatusCode::OK,
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "method not found"}}),
            None,
        ),
    }
}

/// The HTTP+SSE (2024-11-05) transport: GET /mcp is the stream, whose
/// first event names the POST endpoint; answers arrive on the stream.
async fn legacy(app: &App, method: &Method, path: &str, message: Option<Value>) -> Response {
    if path == "/mcp" && *method == Method::GET {
        let session = format!("legacy-{}", rand::random::<u32>());
        let (tx, rx) = mpsc::channel(64);
        let _ = tx.try_send(format!(
            "event: endpoint\ndata: /messages?session={session}\n\n"
        ));
        let (answers, mut answer_rx) = mpsc::channel::<String>(64);
        app.inner.lock().unwrap().legacy.insert(session, answers);
        tokio::spawn(async move {
            while let Some(data) = answer_rx.recv().await {
                if tx
                    .send(format!("event: message\ndata: {data}\n\n"))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        return sse_response(rx);
    }
    if path == "/mcp" {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    if path == "/messages" && *method == Method::POST {
        let Some(message) = message else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        let sender = app.inner.lock().unwrap().legacy.values().next().cloned();
        let Some(sender) = sender else {
            return StatusCode::NOT_FOUND.into_response();
        };
        if message.pointer("/params/name").and_then(Value::as_str) == Some("admin") {
            return (
                StatusCode::FORBIDDEN,
                [(
                    "www-authenticate",
                    "Bearer error=\"insufficient_scope\", scope=\"mcp:admin\"".to_string(),
                )],
            )
                .into_response();
        }
        if let Some(id) = message
            .get("id")
            .filter(|_| message.get("method").is_some())
        {
            let result = if message.get("method").and_then(Value::as_str) == Some("initialize") {
                json!({"protocolVersion": "2024-11-05", "capabilities": {}, "serverInfo": {"name": "legacy", "version": "1"}})
            } else {
                json!({"tools": []})
            };
            let _ = sender
                .send(json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string())
                .await;
        }
        return StatusCode::ACCEPTED.into_response();
    }
    StatusCode::NOT_FOUND.into_response()
}
