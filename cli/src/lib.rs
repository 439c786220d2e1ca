//! `mcpauth_client`: a small client library for the mcpauth broker.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mcpauth_client::ClientError> {
//! let opts = mcpauth_client::ConnectOptions::from_env();
//! let mut client = mcpauth_client::connect(&opts).await?;
//! let status = client.status().await?;
//! println!("mcpauthd {} with {} servers", status.version, status.servers.len());
//! # Ok(()) }
//! ```
//!
//! - [`Client`]: typed calls over the daemon's Unix socket; every request
//!   carries the protocol number, which the daemon checks.
//! - [`connect`]: connects, starting the daemon first when nothing listens
//!   (unless told not to, or the daemon is managed by systemd/launchd).
//! - [`ClientError`]: what went wrong, with the exit code the CLI uses.

pub mod autostart;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use mcpauth_proto::v1::broker_client::BrokerClient;
use mcpauth_proto::{PROTOCOL, PROTOCOL_METADATA};
use tokio::net::UnixStream;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

pub use mcpauth_proto::v1 as pb;

/// Exit codes shared by every `mcpauthctl` command.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
    pub const LOGIN_REQUIRED: u8 = 4;
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("mcpauthd is not running (nothing listens on {socket})")]
    NotRunning { socket: PathBuf },
    #[error("cannot reach mcpauthd at {socket}: {reason}")]
    Unreachable { socket: PathBuf, reason: String },
    #[error(
        "protocol mismatch: mcpauthctl {client_version} speaks protocol {PROTOCOL}, mcpauthd {daemon_version} speaks {daemon_protocol}"
    )]
    ProtocolMismatch {
        client_version: &'static str,
        daemon_version: String,
        daemon_protocol: u32,
    },
    /// The daemon's answer, in its words; the next step it names (as
    /// data) is ours to word: `hint`.
    #[error("{message}")]
    Rpc {
        code: tonic::Code,
        message: String,
        next: Option<pb::NextStep>,
    },
    #[error("could not start mcpauthd: {0}")]
    Autostart(String),
    #[error("mcpauthd is managed by {manager} but not running")]
    Managed {
        manager: &'static str,
        start: &'static str,
    },
    #[error("mcpauthd's {manager} units are installed, but {reason}")]
    ServiceUnusable {
        manager: &'static str,
        reason: String,
    },
}

impl ClientError {
    /// The next step the daemon named for this error, if any.
    pub fn next_step(&self) -> Option<&pb::NextStep> {
        match self {
            ClientError::Rpc { next, .. } => next.as_ref(),
            _ => None,
        }
    }

    /// The documented exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::NotRunning { .. }
            | ClientError::Unreachable { .. }
            | ClientError::Managed { .. }
            | ClientError::ServiceUnusable { .. }
            | ClientError::Autostart(_) => exit::UNREACHABLE,
            ClientError::ProtocolMismatch { .. } => exit::FAILURE,
            ClientError::Rpc { code, .. } => match code {
                tonic::Code::InvalidArgument
                | tonic::Code::NotFound
                | tonic::Code::AlreadyExists
                | tonic::Code::OutOfRange => exit::USAGE,
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                    exit::LOGIN_REQUIRED
                }
                // The daemon answered: it is the authorization server that
                // is unavailable (transport failures are `Unreachable`).
                _ => exit::FAILURE,
            },
        }
    }

    /// The next step for a person, if there is an obvious one.
    pub fn hint(&self) -> Option<String> {
        match self {
            ClientError::NotRunning { .. } => Some(format!(
                "start it with `mcpauthctl start`{}",
                if autostart::user_manager_runs() {
                    ", or keep it running with `mcpauthctl service install`"
                } else {
                    ""
                }
            )),
            ClientError::Unreachable { .. } => Some(
                "check that mcpauthd runs as your user (`mcpauthctl status`); its log is in the state directory".into(),
            ),
            ClientError::ProtocolMismatch { .. } => Some(
                "restart the daemon so the matching version runs: `mcpauthctl stop`, then run your command again"
                    .into(),
            ),
            ClientError::Managed { start, .. } => Some(format!("start it with `{start}`")),
            ClientError::Rpc {
                code: tonic::Code::Unimplemented,
                ..
            } => Some(
                "the running mcpauthd is older than this mcpauthctl: run `mcpauthctl stop`, then your command again".into(),
            ),
            ClientError::ServiceUnusable { .. } => Some(
                "run `mcpauthctl service uninstall` to go back to starting mcpauthd on demand"
                    .into(),
            ),
            ClientError::Autostart(_) => Some("run `mcpauthd` in a terminal to see why".into()),
            ClientError::Rpc {
                next: Some(next), ..
            } => Some(next_step_words(next)).filter(|w| !w.is_empty()),
            ClientError::Rpc { code, .. } => match code {
                tonic::Code::NotFound => Some("see `mcpauthctl list` for the configured servers".into()),
                _ => None,
            },
        }
    }

    fn from_status(status: tonic::Status, socket: &Path) -> Self {
        match status.code() {
            // A connection the daemon closed (or that broke) surfaces as
            // UNKNOWN, CANCELLED ("operation was canceled", when the close
            // races the request) or UNAVAILABLE. The daemon itself never
            // answers UNKNOWN or CANCELLED, and its own UNAVAILABLE (the
            // AS is down) always carries `retry-after`.
            tonic::Code::Unknown | tonic::Code::Cancelled => Self::closed(socket),
            tonic::Code::Unavailable if !status.metadata().contains_key("retry-after") => {
                Self::closed(socket)
            }
            // An unknown server: which daemon said so, too (the config it
            // named may not be the one the person meant).
            tonic::Code::NotFound if status.message().starts_with("no server named ") => {
                let message = status.message();
                let at = message.find("; did you mean").unwrap_or(message.len());
                ClientError::Rpc {
                    code: tonic::Code::NotFound,
                    message: format!(
                        "{} (daemon at {}){}",
                        &message[..at],
                        socket.display(),
                        &message[at..]
                    ),
                    next: None,
                }
            }
            code => ClientError::Rpc {
                code,
                message: status.message().to_string(),
                next: next_step_of(&status),
            },
        }
    }

    fn closed(socket: &Path) -> Self {
        ClientError::Unreachable {
            socket: socket.to_path_buf(),
            reason: "the connection was closed (the daemon only serves its own user)".into(),
        }
    }
}

/// The next step a failed call's status carries in its details (an
/// encoded `ErrorDetail`), if any.
pub fn next_step_of(status: &tonic::Status) -> Option<pb::NextStep> {
    use prost::Message;
    pb::ErrorDetail::decode(status.details())
        .ok()?
        .next_step
        .filter(|s| s.kind() != pb::next_step::Kind::Unspecified)
}

/// A next step in `mcpauthctl`'s words, to follow a message after "; ":
/// "run `mcpauthctl login s`"; empty for a step this version does not
/// know.
pub fn next_step_words(step: &pb::NextStep) -> String {
    use pb::next_step::Kind;
    let server = if step.server.is_empty() {
        "NAME"
    } else {
        step.server.as_str()
    };
    match step.kind() {
        Kind::Login => format!("run `mcpauthctl login {server}`"),
        Kind::LoginAtIdp => format!(
            "run `mcpauthctl login --idp {}` (one login serves every server that uses it)",
            step.idp
        ),
        Kind::LoginWithDevice => format!("run `mcpauthctl login {server} --device`"),
        Kind::LoginWithChallenge => {
            format!("run `mcpauthctl login {server} --www-authenticate HEADER` with its challenge")
        }
        Kind::ShowOrRemove => format!(
            "see it with `mcpauthctl show {server}`, or remove it first with `mcpauthctl remove {server}`"
        ),
        Kind::GetToken => format!("`mcpauthctl token {server}` gets one"),
        Kind::SetClientId => format!("`mcpauthctl add {server} URL --client-id ID` sets it"),
        Kind::StopDaemon => "run `mcpauthctl stop`, then your command again".into(),
        Kind::Unspecified => String::new(),
    }
}

/// Lowercase hex SHA-256 of a token: how a client names a token to the
/// daemon without sending it.
pub fn fingerprint(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A server URL in the form two URLs are compared in: parsed (scheme and
/// host lowercased, default port dropped), without fragment, and without
/// one trailing `/` on the path. The query stays: it can name another
/// server. `None` when it is not a URL.
pub fn normalized_server_url(url: &str) -> Option<String> {
    let mut url = url::Url::parse(url.trim()).ok()?;
    url.set_fragment(None);
    let path = url.path().to_string();
    if let Some(trimmed) = path.strip_suffix('/') {
        url.set_path(trimmed);
    }
    Some(
        url.to_string()
            .replacen("/?", "?", 1)
            .trim_end_matches('/')
            .to_string(),
    )
}

/// Whether a token issued for `issued_for` may be sent to `target`: the
/// same URL once normalized. An empty or unparsable URL matches nothing,
/// so a token whose server is unknown goes nowhere.
pub fn same_server_url(issued_for: &str, target: &str) -> bool {
    match (
        normalized_server_url(issued_for),
        normalized_server_url(target),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// A URL as it may be shown in a line a host logs: scheme, host, port and
/// path; never the query (it can carry keys) or the fragment.
pub fn display_url(url: &str) -> String {
    match url::Url::parse(url.trim()) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "(not a URL)".into(),
    }
}

/// Adds the protocol number to every request.
#[derive(Clone, Copy)]
pub struct ProtocolInterceptor;

impl Interceptor for ProtocolInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert(PROTOCOL_METADATA, PROTOCOL.into());
        Ok(request)
    }
}

type Inner = BrokerClient<InterceptedService<Channel, ProtocolInterceptor>>;

/// The events of a login, as the daemon sends them.
pub type LoginStream = tonic::Streaming<pb::LoginEvent>;

/// A connection to mcpauthd.
#[derive(Clone)]
pub struct Client {
    inner: Inner,
    socket: PathBuf,
}

/// How to reach the daemon.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub socket: PathBuf,
    /// Start the daemon when nothing listens on the socket.
    pub autostart: bool,
}

impl ConnectOptions {
    /// The socket from `$MCP_BROKER_SOCKET` or the default, with autostart.
    pub fn from_env() -> Self {
        Self {
            socket: mcpauth_proto::paths::socket_path(),
            autostart: true,
        }
    }
}

/// Connects to the daemon, starting it first if needed and allowed.
pub async fn connect(opts: &ConnectOptions) -> Result<Client, ClientError> {
    match Client::connect(&opts.socket).await {
        Err(ClientError::NotRunning { .. }) if opts.autostart => {
            autostart::start_daemon(&opts.socket).await?;
            Client::connect(&opts.socket).await
        }
        other => other,
    }
}

impl Client {
    /// Connects to the daemon at `socket`, without starting it.
    pub async fn connect(socket: &Path) -> Result<Self, ClientError> {
        // Connect once by hand so the io error can be classified; tonic's
        // connector hands out this stream first and dials anew afterwards.
        let first = UnixStream::connect(socket)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning {
                        socket: socket.to_path_buf(),
                    }
                }
                _ => ClientError::Unreachable {
                    socket: socket.to_path_buf(),
                    reason: e.to_string(),
                },
            })?;
        let first = Arc::new(Mutex::new(Some(first)));
        let path = socket.to_path_buf();
        // The URI is required by the API but unused: the connector dials the socket.
        let channel = Endpoint::from_static("http://mcpauthd.invalid")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let first = first.lock().unwrap().take();
                let path = path.clone();
                async move {
                    let stream = match first {
                        Some(stream) => stream,
                        None => UnixStream::connect(path).await?,
                    };
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| ClientError::Unreachable {
                socket: socket.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            inner: BrokerClient::with_interceptor(channel, ProtocolInterceptor),
            socket: socket.to_path_buf(),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn err(&self, status: tonic::Status) -> ClientError {
        ClientError::from_status(status, &self.socket)
    }

    /// The daemon's status; fails with [`ClientError::ProtocolMismatch`]
    /// when the daemon speaks another protocol.
    pub async fn status(&mut self) -> Result<pb::StatusReply, ClientError> {
        let reply = self.status_unchecked().await?;
        if reply.protocol != PROTOCOL {
            return Err(ClientError::ProtocolMismatch {
                client_version: env!("CARGO_PKG_VERSION"),
                daemon_version: reply.version,
                daemon_protocol: reply.protocol,
            });
        }
        Ok(reply)
    }

    /// The status, whatever protocol the daemon speaks.
    pub async fn status_unchecked(&mut self) -> Result<pb::StatusReply, ClientError> {
        self.inner
            .status(pb::StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| self.err(e))
    }

    pub async fn shutdown(&mut self) -> Result<(), ClientError> {
        match self.inner.shutdown(pb::ShutdownRequest {}).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    pub async fn list_servers(&mut self) -> Result<Vec<pb::Server>, ClientError> {
        match self.inner.list_servers(pb::ListServersRequest {}).await {
            Ok(r) => Ok(r.into_inner().servers),
            Err(e) => Err(self.err(e)),
        }
    }

    pub async fn get_server(&mut self, name: &str) -> Result<pb::Server, ClientError> {
        let request = pb::GetServerRequest { name: name.into() };
        self.inner
            .get_server(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| self.err(e))
    }

    pub async fn add_server(
        &mut self,
        request: pb::AddServerRequest,
    ) -> Result<pb::Server, ClientError> {
        self.inner
            .add_server(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| self.err(e))
    }

    /// Adopts other tools' logins (the daemon reads their files).
    pub async fn import(
        &mut self,
        request: pb::ImportRequest,
    ) -> Result<Vec<pb::ImportResult>, ClientError> {
        self.inner
            .import(request)
            .await
            .map(|r| r.into_inner().results)
            .map_err(|e| self.err(e))
    }

    pub async fn remove_server(&mut self, name: &str) -> Result<(), ClientError> {
        let request = pb::RemoveServerRequest { name: name.into() };
        match self.inner.remove_server(request).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// A stream of events, for one server or (with `None`) all of them.
    pub async fn watch(
        &mut self,
        server: Option<&str>,
    ) -> Result<tonic::Streaming<pb::Event>, ClientError> {
        let request = pb::WatchRequest {
            server: server.unwrap_or_default().into(),
        };
        self.inner
            .watch(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| self.err(e))
    }

    /// Starts (or joins) a login: a `LoginStarted`, then a `LoginResult`.
    pub async fn login(
        &mut self,
        server: &str,
        scopes: Vec<String>,
    ) -> Result<tonic::Streaming<pb::LoginEvent>, ClientError> {
        let request = pb::LoginRequest {
            server: server.into(),
            scopes,
            ..Default::default()
        };
        self.login_with(request).await
    }

    /// Starts or joins a login with every option of the request: a
    /// `LoginStarted` (or a `DeviceAuthorization`), then a `LoginResult`.
    pub async fn login_with(
        &mut self,
        request: pb::LoginRequest,
    ) -> Result<LoginStream, ClientError> {
        self.inner
            .login(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| self.err(e))
    }

    /// Completes the pending login with a pasted redirect URL.
    pub async fn complete_login(
        &mut self,
        server: &str,
        redirect_url: &str,
    ) -> Result<pb::LoginResult, ClientError> {
        let request = pb::CompleteLoginRequest {
            server: server.into(),
            redirect_url: redirect_url.into(),
        };
        self.inner
            .complete_login(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| self.err(e))
    }

    pub async fn cancel_login(&mut self, server: &str) -> Result<bool, ClientError> {
        let request = pb::CancelLoginRequest {
            server: server.into(),
        };
        match self.inner.cancel_login(request).await {
            Ok(r) => Ok(r.into_inner().cancelled),
            Err(e) => Err(self.err(e)),
        }
    }

    pub async fn logout(
        &mut self,
        server: &str,
        forget_client: bool,
    ) -> Result<pb::LogoutReply, ClientError> {
        let request = pb::LogoutRequest {
            server: server.into(),
            forget_client,
        };
        match self.inner.logout(request).await {
            Ok(r) => Ok(r.into_inner()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Discovery and registration walked step by step (nothing changes).
    pub async fn doctor(&mut self, server: &str) -> Result<pb::DoctorReply, ClientError> {
        let request = pb::DoctorRequest {
            server: server.into(),
        };
        self.inner
            .doctor(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| self.err(e))
    }

    pub async fn refresh(&mut self, server: &str) -> Result<pb::RefreshReply, ClientError> {
        let request = pb::RefreshRequest {
            server: server.into(),
        };
        self.inner
            .refresh(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| self.err(e))
    }

    /// The current access token, valid for at least `min_ttl_secs` (daemon
    /// default: 60) when that can be arranged.
    pub async fn get_token(
        &mut self,
        server: &str,
        min_ttl_secs: Option<u32>,
    ) -> Result<pb::TokenReply, ClientError> {
        let request = pb::GetTokenRequest {
            server: server.into(),
            min_ttl_secs,
            headers_helper: false,
        };
        self.inner
            .get_token(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| self.err(e))
    }

    /// Reports that a resource server rejected `token` (only its SHA-256
    /// is sent) and returns the token to use instead.
    /// `get_token` as a headers helper asks: a rerun moments later makes
    /// the daemon check the token with the server first.
    pub async fn get_token_for_helper(
        &mut self,
        server: &str,
    ) -> Result<pb::TokenReply, ClientError> {
        let request = pb::GetTokenRequest {
            server: server.into(),
            min_ttl_secs: None,
            headers_helper: true,
        };
        self.inner
            .get_token(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| self.err(e))
    }

    pub async fn report_unauthorized(
        &mut self,
        server: &str,
        token: &str,
        http_status: u32,
        www_authenticate: &str,
    ) -> Result<pb::TokenReply, ClientError> {
        let request = pb::ReportUnauthorizedRequest {
            server: server.into(),
            token_sha256: fingerprint(token),
            http_status,
            www_authenticate: www_authenticate.into(),
        };
        self.inner
            .report_unauthorized(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| self.err(e))
    }

    /// Sends a report exactly as given, unchecked: what a client in another
    /// language might send.
    pub async fn report_unauthorized_raw(
        &mut self,
        request: pb::ReportUnauthorizedRequest,
    ) -> Result<pb::TokenReply, ClientError> {
        self.inner
            .report_unauthorized(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| self.err(e))
    }

    /// Converts a status met while reading a stream.
    pub fn stream_error(&self, status: tonic::Status) -> ClientError {
        self.err(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(status: tonic::Status) -> u8 {
        ClientError::from_status(status, Path::new("/run/x.sock")).exit_code()
    }

    #[test]
    fn a_closed_connection_is_unreachable_and_the_daemons_own_answers_are_not() {
        // What tonic reports when the daemon closes the connection.
        assert_eq!(exit(tonic::Status::cancelled("operation was canceled")), 3);
        assert_eq!(exit(tonic::Status::unknown("transport error")), 3);
        assert_eq!(exit(tonic::Status::unavailable("connection reset")), 3);
        // The daemon's "the AS is unavailable" carries retry-after, and
        // may well mention a connection.
        let mut busy = tonic::Status::unavailable(
            "the authorization server is unavailable (cannot reach x: connection failed); retry after 5s",
        );
        busy.metadata_mut().insert("retry-after", 5.into());
        assert_eq!(exit(busy), 1);
        assert_eq!(exit(tonic::Status::unauthenticated("login required")), 4);
        assert_eq!(exit(tonic::Status::not_found("no server x")), 2);
    }

    #[test]
    fn a_token_goes_only_to_the_url_it_was_issued_for() {
        let issued = "https://mcp.linear.app/mcp";
        for same in [
            "https://mcp.linear.app/mcp",
            "https://mcp.linear.app/mcp/",
            "HTTPS://MCP.Linear.App:443/mcp",
            "https://mcp.linear.app/mcp#x",
            " https://mcp.linear.app/mcp ",
        ] {
            assert!(same_server_url(issued, same), "{same}");
        }
        for other in [
            "https://evil.example/mcp",
            "https://mcp.linear.app.evil.example/mcp",
            "http://mcp.linear.app/mcp",
            "https://mcp.linear.app:8443/mcp",
            "https://mcp.linear.app/mcp2",
            "https://mcp.linear.app/",
            "https://mcp.linear.app/mcp?tenant=other",
            "https://user@evil.example/mcp",
            "not a url",
            "",
        ] {
            assert!(!same_server_url(issued, other), "{other}");
        }
        assert!(same_server_url("https://h/", "https://h"));
        assert!(same_server_url("https://h/?a=1", "https://h?a=1"));
        // A token whose server is not known goes nowhere.
        assert!(!same_server_url("", "https://h/"));
    }

    #[test]
    fn urls_are_shown_without_query_or_credentials() {
        assert_eq!(
            display_url("https://u:p@h.example/mcp?key=s3cret#f"),
            "https://h.example/mcp"
        );
        assert_eq!(display_url("nope"), "(not a URL)");
    }
}
