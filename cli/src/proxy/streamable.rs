//! The Streamable HTTP transport: every message POSTed, answered with
//! JSON, an SSE stream or 202; the session (`Mcp-Session-Id`) started
//! again when the server ends it; the GET stream of server-initiated
//! messages; streams resumed with `Last-Event-ID`; the DELETE at close.
//! A server that refuses the first POST's initialize is tried as an
//! HTTP+SSE server (`legacy`).

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_stream::StreamExt;

use super::recovery::Recovery;
use super::sse::SseParser;
use super::upstream::{Answer, UpstreamError, challenge};
use super::{CLOSE_TIMEOUT, Proxy, UPSTREAM_FAILED, error_response, problem};

impl Proxy {
    /// Sends one message upstream and passes on what comes back.
    pub(super) async fn forward(self: &Arc<Self>, message: Value) {
        let is_initialize = message.get("method").and_then(Value::as_str) == Some("initialize");
        if is_initialize {
            *self.initialize.lock().unwrap() = Some(message.clone());
        }
        let legacy = self.legacy.endpoint.lock().unwrap().clone();
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
        let mut retried = false;
        let mut reinitialized = false;
        loop {
            let answer = match self.post(&self.url, &message, &token).await {
                Ok(a) => a,
                Err(e) => return self.fail(&message, UPSTREAM_FAILED, &e.to_string()).await,
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
                Answer::Status(status @ (401 | 403), www) => {
                    match self.recover(&token, status, &www, &mut retried).await {
                        Recovery::Retry(replacement) => token = replacement,
                        Recovery::Refused(refusal) => return self.refused(&message, refusal).await,
                        Recovery::NotAuth => return self.failed_with(&message, status).await,
                    }
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
                            *self.legacy.endpoint.lock().unwrap() = Some(endpoint.clone());
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
                Answer::Status(status, _) => return self.failed_with(&message, status).await,
            }
        }
    }

    /// Answers `message` with the server's status.
    async fn failed_with(&self, message: &Value, status: u16) {
        let text = format!("{} answered HTTP {status}", self.shown());
        self.fail(message, UPSTREAM_FAILED, &text).await;
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
    ) -> Result<Option<reqwest::Response>, UpstreamError> {
        let mut retried = false;
        let mut reinitialized = false;
        loop {
            let token = self.tokens.current().await?;
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
                status @ (401 | 403) => {
                    let www = challenge(&response);
                    match self.recover(&token, status, &www, &mut retried).await {
                        // Asked for again at the top, as the token to send now.
                        Recovery::Retry(_) => {}
                        Recovery::Refused(refusal) => return Err(refusal.into()),
                        Recovery::NotAuth => return Err(UpstreamError::Status(status)),
                    }
                }
                // The server ended the session (some do on every
                // refresh): a new one, once, as for a POST.
                404 if !reinitialized
                    && !self.closing.load(SeqCst)
                    && self.session.lock().unwrap().is_some() =>
                {
                    reinitialized = true;
                    if !self.reinitialize(&token).await {
                        return Err(UpstreamError::SessionLost);
                    }
                }
                status => return Err(UpstreamError::Status(status)),
            }
        }
    }

    /// The stream of server-initiated messages, kept open (and resumed)
    /// while the session lives.
    pub(super) fn start_get_stream(self: &Arc<Self>) {
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

    /// Ends the session at the server: the streams stop first (nothing
    /// reconnects with the deleted session), then one DELETE, waited for
    /// a second at most.
    pub(super) async fn close(&self) {
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
