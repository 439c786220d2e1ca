//! The requests to the server, for both transports: the headers every
//! request carries, opening a request within a time limit, a POST and
//! what it answered, a body read within `MAX_MESSAGE`, and the HTTP
//! client configured as config.toml says (`proxy`, `ca_file`).

use std::time::Duration;

use serde_json::Value;
use tokio_stream::StreamExt;

use super::recovery::Refusal;
use super::tokens::TokenError;
use super::{MAX_MESSAGE, Proxy, REQUEST_TIMEOUT};

/// Why a request to the server, or a stream from it, failed. Each says
/// it in one line for stderr and the host's error; a URL in it is shown
/// without its query (`display_url`).
#[derive(Debug, thiserror::Error)]
pub(super) enum UpstreamError {
    #[error("cannot reach {url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("{url} sent no answer within {} s", .limit.as_secs_f64())]
    Silent { url: String, limit: Duration },
    /// The answer broke off: its innermost cause.
    #[error("{0}")]
    Broken(String),
    #[error("the server's answer is larger than 16 MiB")]
    TooLarge,
    #[error("HTTP {0}")]
    Status(u16),
    /// The broker had no token to send.
    #[error(transparent)]
    NoToken(#[from] TokenError),
    /// The server refused the token, past recovery.
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("the server ended the session and a new one could not be started")]
    SessionLost,
    /// HTTP+SSE: the stream's GET was not answered with one.
    #[error("GET answered HTTP {0}")]
    NoStream(u16),
    #[error("no endpoint event on the stream")]
    NoEndpoint,
    #[error("bad endpoint: {0}")]
    BadEndpoint(url::ParseError),
    #[error("the endpoint is on another origin; refusing to send the token there")]
    ForeignEndpoint,
    /// HTTP+SSE: the host's initialize, replayed for a new session.
    #[error("its initialize answered HTTP {0}")]
    ReplayRefused(u16),
    #[error("no answer to initialize on its stream")]
    ReplayUnanswered,
    #[error("its stream closed before answering initialize")]
    ReplayClosed,
}

/// What the upstream answered to one POST.
pub(super) enum Answer {
    Accepted,
    Json(Vec<u8>),
    Sse(reqwest::Response),
    Status(u16, String),
}

impl Proxy {
    pub(super) fn headers(
        &self,
        message: Option<&Value>,
        token: &str,
    ) -> reqwest::header::HeaderMap {
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
    pub(super) async fn open(
        &self,
        request: reqwest::RequestBuilder,
        limit: Duration,
    ) -> Result<reqwest::Response, UpstreamError> {
        match tokio::time::timeout(limit, request.send()).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(UpstreamError::Unreachable {
                url: self.shown(),
                cause: short(e),
            }),
            Err(_) => Err(UpstreamError::Silent {
                url: self.shown(),
                limit,
            }),
        }
    }

    pub(super) async fn post(
        &self,
        url: &url::Url,
        message: &Value,
        token: &str,
    ) -> Result<Answer, UpstreamError> {
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
        let www = challenge(&response);
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
}

/// The response's `WWW-Authenticate`, its first 4 KiB ("" when none).
pub(super) fn challenge(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(4096)
        .collect()
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

/// The whole body, at most `MAX_MESSAGE`.
async fn read_bounded(response: reqwest::Response) -> Result<Vec<u8>, UpstreamError> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| UpstreamError::Broken(short(e)))?;
        if body.len() + chunk.len() > MAX_MESSAGE {
            return Err(UpstreamError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// config.toml's top-level `proxy` and `ca_file`, as the daemon uses them
/// (hosts in `NO_PROXY` excepted). The daemon validates the file; what
/// cannot be used here is left out, never fatal, and a proxy's URL (which
/// may hold a password) is never shown.
pub(super) fn with_network(
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
