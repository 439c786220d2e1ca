//! The HTTP+SSE transport of 2024-11-05, for servers that refuse the
//! Streamable HTTP initialize: a GET stream whose `endpoint` event names
//! where to POST, the answers arriving on that stream. The session lives
//! as long as its stream; when the stream ends, the next request starts
//! another, replaying the host's initialize (its answer kept from the
//! host, which has its own).

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Mutex, oneshot};
use tokio_stream::StreamExt;

use super::recovery::Recovery;
use super::sse::SseParser;
use super::upstream::{Answer, UpstreamError};
use super::{Proxy, UPSTREAM_FAILED, problem};

/// An HTTP+SSE session: where to POST, and the stream it lives as long
/// as.
#[derive(Default)]
pub(super) struct Session {
    /// The POST endpoint, once found.
    pub(super) endpoint: std::sync::Mutex<Option<url::Url>>,
    /// Bumped by every stream opened. The session lives as long as its
    /// stream: when the newest one ends, the session is lost and the next
    /// request starts another.
    generation: AtomicU64,
    lost: AtomicBool,
    /// One new session at a time, whatever the requests waiting.
    reopen: Mutex<()>,
    /// Told when the answer to a replayed initialize (which the host must
    /// not see: it has its own) arrives on the stream.
    replayed: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

/// The id of an initialize the proxy replays for a new HTTP+SSE session.
const REPLAY_ID: &str = "mcpauthctl-reinitialize";

impl Proxy {
    /// Connects to an HTTP+SSE (2024-11-05) server: GET the stream, wait
    /// for its `endpoint` event, and relay the rest of it to the host.
    pub(super) async fn open_legacy(
        self: &Arc<Self>,
        token: &str,
    ) -> Result<url::Url, UpstreamError> {
        let request = self
            .http
            .get(self.url.clone())
            .headers(self.headers(None, token))
            .header("accept", "text/event-stream");
        let response = self.open(request, self.open_timeout).await?;
        if response.status().as_u16() != 200 {
            return Err(UpstreamError::NoStream(response.status().as_u16()));
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
        .ok_or(UpstreamError::NoEndpoint)?;
        let endpoint = self
            .url
            .join(endpoint.trim())
            .map_err(UpstreamError::BadEndpoint)?;
        if endpoint.origin() != self.url.origin() {
            return Err(UpstreamError::ForeignEndpoint);
        }
        let generation = self.legacy.generation.fetch_add(1, SeqCst) + 1;
        self.legacy.lost.store(false, SeqCst);
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
                            if let Some(tx) = proxy.legacy.replayed.lock().unwrap().take() {
                                let _ = tx.send(());
                            }
                            continue;
                        }
                        proxy.emit(serde_json::to_vec(&v).expect("JSON")).await;
                    }
                }
            }
            if proxy.legacy.generation.load(SeqCst) == generation && !proxy.closing.load(SeqCst) {
                proxy.legacy.lost.store(true, SeqCst);
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
    async fn reopen_legacy(
        self: &Arc<Self>,
        seen: u64,
        replay: bool,
    ) -> Result<url::Url, UpstreamError> {
        let _one = self.legacy.reopen.lock().await;
        if self.legacy.generation.load(SeqCst) != seen
            && !self.legacy.lost.load(SeqCst)
            && let Some(endpoint) = self.legacy.endpoint.lock().unwrap().clone()
        {
            return Ok(endpoint);
        }
        problem(
            &self.name,
            "the server's HTTP+SSE session is gone; starting a new one",
        );
        let token = self.tokens.current().await?;
        let endpoint = self.open_legacy(&token).await?;
        let init = self.initialize.lock().unwrap().clone();
        if let Some(mut init) = init.filter(|_| replay) {
            init["id"] = json!(REPLAY_ID);
            let (tx, rx) = oneshot::channel();
            *self.legacy.replayed.lock().unwrap() = Some(tx);
            match self.post(&endpoint, &init, &token).await? {
                Answer::Status(status, _) => return Err(UpstreamError::ReplayRefused(status)),
                Answer::Accepted | Answer::Json(_) | Answer::Sse(_) => {}
            }
            tokio::time::timeout(Duration::from_secs(10), rx)
                .await
                .map_err(|_| UpstreamError::ReplayUnanswered)?
                .map_err(|_| UpstreamError::ReplayClosed)?;
            let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
            self.post(&endpoint, &initialized, &token).await?;
        }
        *self.legacy.endpoint.lock().unwrap() = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// Sends one message to an HTTP+SSE server (its answer comes on the
    /// stream), starting a new session first when the last one was lost.
    pub(super) async fn forward_legacy(self: &Arc<Self>, endpoint: &url::Url, message: Value) {
        let is_initialize = message.get("method").and_then(Value::as_str) == Some("initialize");
        let mut endpoint = endpoint.clone();
        let mut retried = false;
        let mut reopened = false;
        // The stream generation found lost, when a new session is due.
        let mut reopen_from: Option<u64> = None;
        loop {
            if !reopened && reopen_from.is_none() && self.legacy.lost.load(SeqCst) {
                reopen_from = Some(self.legacy.generation.load(SeqCst));
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
            let generation = self.legacy.generation.load(SeqCst);
            let token = match self.tokens.current().await {
                Ok(t) => t,
                Err(e) => return self.fail_token(&message, e).await,
            };
            match self.post(&endpoint, &message, &token).await {
                Ok(Answer::Accepted | Answer::Json(_) | Answer::Sse(_)) => return,
                Ok(Answer::Status(status @ (401 | 403), www)) => {
                    match self.recover(&token, status, &www, &mut retried).await {
                        // Asked for again at the top, as the token to send now.
                        Recovery::Retry(_) => {}
                        Recovery::Refused(refusal) => return self.refused(&message, refusal).await,
                        Recovery::NotAuth => {
                            return self.legacy_failed(&message, &endpoint, status).await;
                        }
                    }
                }
                // The session ended at the server, its stream maybe not
                // yet: a new session, then this again.
                Ok(Answer::Status(404, _)) if !reopened => reopen_from = Some(generation),
                Ok(Answer::Status(status, _)) => {
                    return self.legacy_failed(&message, &endpoint, status).await;
                }
                Err(e) => return self.fail(&message, UPSTREAM_FAILED, &e.to_string()).await,
            }
        }
    }

    /// Answers `message` with the status the session's endpoint answered.
    async fn legacy_failed(&self, message: &Value, endpoint: &url::Url, status: u16) {
        let text = format!(
            "{} answered HTTP {status}",
            mcpauth_client::display_url(endpoint.as_str())
        );
        self.fail(message, UPSTREAM_FAILED, &text).await;
    }
}
