//! The HTTP client the engine uses for every request.
//!
//! - Every URL is checked by `url_policy` before it is requested.
//! - Connect timeout 10 s (at most the request timeout), whole-request
//!   timeout 30 s.
//! - Bodies are read up to 1 MiB; more is an error.
//! - Redirects are never followed automatically. Metadata fetches follow up
//!   to 3, each target checked like any other URL; token, registration and
//!   revocation requests follow none (a redirect could carry a code or a
//!   refresh token elsewhere).

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use serde::de::DeserializeOwned;
use url::Url;

use super::OAuthError;
use crate::url_policy::{check_discovered_url, check_secure_url};

pub const MAX_BODY: usize = 1024 * 1024;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_REDIRECTS: usize = 3;

/// A response whose body was read (within the cap).
pub struct Response {
    pub status: u16,
    /// `Retry-After` in seconds, when the server sent one as a number.
    pub retry_after_secs: Option<u64>,
    pub content_type: String,
    pub www_authenticate: Vec<String>,
    pub body: Vec<u8>,
}

/// A metadata document, or the reason there was none at that URL.
pub enum Fetched<T> {
    Found(T),
    /// 4xx: nothing there; try the next candidate.
    Missing(u16),
}

/// The HTTP client, shared by every clone; rebuilt when the network
/// settings of config.toml (`proxy`, `ca_file`) change.
#[derive(Clone)]
pub struct HttpClient {
    client: std::sync::Arc<std::sync::RwLock<reqwest::Client>>,
    timeout: Duration,
    network: std::sync::Arc<std::sync::Mutex<crate::config::Network>>,
}

/// The URL without query or fragment, for messages.
pub fn display_url(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

pub fn checked(what: &'static str, raw: &str) -> Result<Url, OAuthError> {
    let url = Url::parse(raw).map_err(|e| OAuthError::InsecureUrl {
        what,
        url: raw.chars().take(200).collect(),
        source: crate::url_policy::UrlError::Parse(e.to_string()),
    })?;
    check_secure_url(&url).map_err(|source| OAuthError::InsecureUrl {
        what,
        url: display_url(&url),
        source,
    })?;
    Ok(url)
}

/// Parses a URL discovered while serving the MCP server `server` and
/// checks it: the general policy, and no pivot from a server elsewhere to
/// this machine.
pub fn checked_for(what: &'static str, raw: &str, server: &Url) -> Result<Url, OAuthError> {
    let url = checked(what, raw)?;
    check_discovered_url(&url, server).map_err(|source| OAuthError::InsecureUrl {
        what,
        url: display_url(&url),
        source,
    })?;
    Ok(url)
}

/// Builds the reqwest client: no redirects followed, the timeouts, and
/// the configured proxy (hosts in `NO_PROXY` excepted) and extra trusted
/// authorities.
fn build(timeout: Duration, network: &crate::config::Network) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT.min(timeout))
        .timeout(timeout)
        .user_agent(concat!("mcpauth/", env!("CARGO_PKG_VERSION")));
    if let Some(proxy) = &network.proxy {
        let proxy = reqwest::Proxy::all(proxy.expose())
            .map_err(|_| "proxy is not a URL reqwest can use".to_string())?
            .no_proxy(reqwest::NoProxy::from_env());
        // Proxies close a plain-HTTP connection after its request when
        // they like (tinyproxy does, without saying so): a pooled one
        // would fail the next request. The daemon's requests are few.
        builder = builder.proxy(proxy).pool_max_idle_per_host(0);
    }
    if let Some(path) = &network.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("ca_file {} holds no PEM certificate: {e}", path.display()))?;
        if certificates.is_empty() {
            return Err(format!(
                "ca_file {} holds no PEM certificate",
                path.display()
            ));
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> Self {
        Self::with_timeout(REQUEST_TIMEOUT)
    }

    /// A client whose requests time out after `timeout` in all.
    pub fn with_timeout(timeout: Duration) -> Self {
        let client =
            build(timeout, &crate::config::Network::default()).expect("the HTTP client builds");
        Self {
            client: std::sync::Arc::new(std::sync::RwLock::new(client)),
            timeout,
            network: Default::default(),
        }
    }

    /// The client for one request (a cheap handle).
    fn client(&self) -> reqwest::Client {
        self.client.read().unwrap().clone()
    }

    /// Uses `network` (config.toml's `proxy` and `ca_file`) from now on,
    /// if it is not what is in use. On an error (an unreadable CA file)
    /// the client in use stays, and the error says why, without the
    /// proxy's URL (it may hold a password).
    pub fn use_network(&self, network: &crate::config::Network) -> Result<bool, String> {
        let mut current = self.network.lock().unwrap();
        if *current == *network {
            return Ok(false);
        }
        let client = build(self.timeout, network)?;
        *self.client.write().unwrap() = client;
        *current = network.clone();
        Ok(true)
    }

    async fn read(url: &Url, mut response: reqwest::Response) -> Result<Response, OAuthError> {
        let status = response.status().as_u16();
        let header = |name| {
            response
                .headers()
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_string))
                .collect::<Vec<_>>()
        };
        let content_type = header(CONTENT_TYPE).into_iter().next().unwrap_or_default();
        let www_authenticate = header(WWW_AUTHENTICATE);
        // RFC 9110 §10.2.3 also allows an HTTP date; servers that throttle
        // token endpoints send seconds, and a date falls back to our own
        // backoff.
        let retry_after_secs = header(RETRY_AFTER)
            .first()
            .and_then(|v| v.trim().parse::<u64>().ok());
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY as u64)
        {
            return Err(OAuthError::TooLarge {
                url: display_url(url),
                limit: MAX_BODY,
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| unreachable(url, &e))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(OAuthError::TooLarge {
                    url: display_url(url),
                    limit: MAX_BODY,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response {
            status,
            retry_after_secs,
            content_type,
            www_authenticate,
            body,
        })
    }

    async fn send(
        &self,
        url: &Url,
        request: reqwest::RequestBuilder,
    ) -> Result<Response, OAuthError> {
        let response = request.send().await.map_err(|e| unreachable(url, &e))?;
        if response.status().is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .chars()
                .take(200)
                .collect();
            return Err(OAuthError::Redirect {
                url: display_url(url),
                location,
            });
        }
        Self::read(url, response).await
    }

    /// GETs a JSON document for the MCP server `server`, following up to 3
    /// redirects, each checked like a discovered URL.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        url: &Url,
        server: &Url,
    ) -> Result<Fetched<T>, OAuthError> {
        Ok(match self.get_json_from(url, server).await? {
            Fetched::Found((doc, _)) => Fetched::Found(doc),
            Fetched::Missing(status) => Fetched::Missing(status),
        })
    }

    /// [`Self::get_json`], with the URL the document came from (after
    /// redirects), against which its relative URLs resolve.
    pub async fn get_json_from<T: DeserializeOwned>(
        &self,
        url: &Url,
        server: &Url,
    ) -> Result<Fetched<(T, Url)>, OAuthError> {
        let mut current = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            check_discovered_url(&current, server).map_err(|source| OAuthError::InsecureUrl {
                what: "metadata URL",
                url: display_url(&current),
                source,
            })?;
            let request = self
                .client()
                .get(current.clone())
                .header("Accept", "application/json");
            match self.send(&current, request).await {
                Err(OAuthError::Redirect { location, .. }) => {
                    current = current
                        .join(&location)
                        .map_err(|e| OAuthError::BadDocument {
                            url: display_url(&current),
                            reason: format!("bad redirect: {e}"),
                        })?;
                    continue;
                }
                Err(e) => return Err(e),
                Ok(response) => {
                    if (400..500).contains(&response.status) {
                        return Ok(Fetched::Missing(response.status));
                    }
                    return parse_json(&current, &response)
                        .map(|doc| Fetched::Found((doc, current.clone())));
                }
            }
        }
        Err(OAuthError::BadDocument {
            url: display_url(url),
            reason: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// POSTs a form (token, revocation). `basic` adds HTTP Basic client
    /// authentication. Any status is returned; redirects are errors.
    pub async fn post_form(
        &self,
        url: &Url,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Result<Response, OAuthError> {
        let mut request = self
            .client()
            .post(url.clone())
            .header("Accept", "application/json")
            .form(form);
        if let Some((id, secret)) = basic {
            // RFC 6749 §2.3.1: both parts form-urlencoded first.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            request = request.basic_auth(enc(id), Some(enc(secret)));
        }
        self.send(url, request).await
    }

    /// Asks the MCP server at `server` whether it accepts `token`: a
    /// JSON-RPC `ping` with the token, looking only at the status (an SSE
    /// answer is not waited for). Returns the status and the
    /// `WWW-Authenticate` challenges. The token goes to the server it was
    /// issued for, and nowhere else: no redirect is followed.
    pub async fn check_token(
        &self,
        server: &Url,
        token: &crate::secret::Secret,
    ) -> Result<(u16, Vec<String>), OAuthError> {
        check_secure_url(server).map_err(|source| OAuthError::InsecureUrl {
            what: "server URL",
            url: display_url(server),
            source,
        })?;
        let response = self
            .client()
            .post(server.clone())
            .header("Accept", "application/json, text/event-stream")
            .header("Content-Type", "application/json")
            .bearer_auth(token.expose())
            .body(r#"{"jsonrpc":"2.0","id":"mcpauth-check","method":"ping"}"#)
            .send()
            .await
            .map_err(|e| unreachable(server, &e))?;
        let challenges = response
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(|s| s.chars().take(4096).collect()))
            .collect();
        Ok((response.status().as_u16(), challenges))
    }

    /// POSTs a JSON body (registration, MCP probe).
    pub async fn post_json(
        &self,
        url: &Url,
        body: &serde_json::Value,
        extra_headers: &[(&str, &str)],
    ) -> Result<Response, OAuthError> {
        let mut request = self
            .client()
            .post(url.clone())
            .header("Accept", "application/json, text/event-stream")
            .json(body);
        for (k, v) in extra_headers {
            request = request.header(*k, *v);
        }
        self.send(url, request).await
    }
}

fn unreachable(url: &Url, e: &reqwest::Error) -> OAuthError {
    // The causes, innermost last, as text: reqwest, hyper and rustls
    // errors do not share a type to match on, but their messages are
    // stable, and none of them carries anything we sent.
    let mut chain = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push(s.to_string());
        source = s.source();
    }
    let io_kind = {
        let mut source = std::error::Error::source(e);
        let mut kind = None;
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                kind = Some(io.kind());
            }
            source = s.source();
        }
        kind
    };
    let text = chain.join(": ");
    let host = url.host_str().unwrap_or("the server").to_string();
    let port = url.port_or_known_default().unwrap_or(0);
    let reason = classify(e.is_timeout(), io_kind, &text, &host, port);
    OAuthError::Unreachable {
        url: display_url(url),
        reason,
    }
}

/// What kind of network failure `text` (the error's causes) describes,
/// with the next step for a person.
fn classify(
    timed_out: bool,
    io_kind: Option<std::io::ErrorKind>,
    text: &str,
    host: &str,
    port: u16,
) -> String {
    let lower = text.to_ascii_lowercase();
    if timed_out {
        return "timed out (no answer in time); the server may be down or overloaded, or a firewall drops the traffic".into();
    }
    if lower.contains("dns error")
        || lower.contains("failed to lookup address")
        || lower.contains("name or service not known")
        || lower.contains("name resolution")
        || lower.contains("nodename nor servname")
    {
        return format!(
            "cannot resolve the host name {host}; check the URL for a typo, and your network or DNS"
        );
    }
    if io_kind == Some(std::io::ErrorKind::ConnectionRefused)
        || lower.contains("connection refused")
    {
        return format!(
            "connection refused by {host}:{port}; nothing listens there: check the URL's port and that the server is running"
        );
    }
    let tls = lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("handshake")
        || lower.contains("invalidcontenttype")
        || lower.contains("corrupt message");
    if tls {
        let which = if lower.contains("notvalidforname") || lower.contains("not valid for name") {
            format!("the certificate is not valid for {host}")
        } else if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
            "the certificate is signed by an unknown authority (a self-signed certificate, or a proxy that intercepts TLS?)".to_string()
        } else if lower.contains("badsignature") || lower.contains("bad signature") {
            "the certificate's signature does not verify (it names an authority that did not sign it: forged, or a misconfigured server)".to_string()
        } else if lower.contains("expired") {
            "the certificate has expired".to_string()
        } else if lower.contains("notvalidyet") {
            "the certificate is not valid yet (is this machine's clock right?)".to_string()
        } else if lower.contains("invalidcontenttype") || lower.contains("corrupt message") {
            "the server did not answer with TLS (is it plain http on that port?)".to_string()
        } else {
            let short: String = text.chars().take(160).collect();
            format!("the TLS handshake failed ({short})")
        };
        return format!(
            "TLS failed: {which}; check the URL, or the certificate the server presents"
        );
    }
    if io_kind == Some(std::io::ErrorKind::ConnectionReset) {
        return format!(
            "the connection to {host}:{port} was reset; try again, and check any proxy or firewall in between"
        );
    }
    let short: String = text.chars().take(200).collect();
    if short.is_empty() {
        "the request failed".into()
    } else {
        format!("the request failed ({short})")
    }
}

/// Parses a JSON body, insisting on a JSON content type when one is given.
pub fn parse_json<T: DeserializeOwned>(url: &Url, response: &Response) -> Result<T, OAuthError> {
    if !(200..300).contains(&response.status) {
        return Err(OAuthError::Status {
            url: display_url(url),
            status: response.status,
            retry_after_secs: response.retry_after_secs,
        });
    }
    let ct = response.content_type.to_ascii_lowercase();
    if !ct.is_empty() && !ct.contains("json") {
        return Err(OAuthError::NotJson {
            url: display_url(url),
            content_type: ct.chars().take(80).collect(),
        });
    }
    serde_json::from_slice(&response.body).map_err(|e| OAuthError::BadDocument {
        url: display_url(url),
        reason: e.to_string().chars().take(200).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::classify;

    #[test]
    fn network_failures_name_their_kind_and_the_next_step() {
        use std::io::ErrorKind;
        let c = |t, k, text: &str| classify(t, k, text, "mcp.example.com", 443);
        assert!(c(true, None, "").starts_with("timed out"));
        assert!(
            c(
                false,
                None,
                "dns error: failed to lookup address information: Name or service not known"
            )
            .contains("cannot resolve the host name mcp.example.com")
        );
        assert!(
            c(
                false,
                Some(ErrorKind::ConnectionRefused),
                "tcp connect error: Connection refused (os error 111)"
            )
            .contains("connection refused by mcp.example.com:443")
        );
        assert!(
            c(false, None, "invalid peer certificate: NotValidForName")
                .contains("not valid for mcp.example.com")
        );
        assert!(
            c(false, None, "invalid peer certificate: UnknownIssuer").contains("unknown authority")
        );
        assert!(c(false, None, "invalid peer certificate: Expired").contains("expired"));
        assert!(
            c(false, None, "invalid peer certificate: BadSignature")
                .contains("signature does not verify")
        );
        assert!(
            c(
                false,
                None,
                "received corrupt message of type InvalidContentType"
            )
            .contains("did not answer with TLS")
        );
        assert!(
            c(false, Some(ErrorKind::ConnectionReset), "connection reset").contains("was reset")
        );
    }
}
