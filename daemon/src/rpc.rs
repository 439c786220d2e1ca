//! The gRPC adapter: the only daemon module that knows tonic and prost.
//!
//! Each handler checks the client's protocol number, calls the broker, and
//! converts domain types to wire types (the `From` impls below). Typed
//! broker errors map to gRPC codes: invalid input -> INVALID_ARGUMENT,
//! unknown server -> NOT_FOUND, duplicate -> ALREADY_EXISTS, a broken config
//! file -> FAILED_PRECONDITION, storage trouble -> INTERNAL.

use std::pin::Pin;
use std::sync::Arc;

use mcpauth_proto::v1::{self as pb, broker_server};
use mcpauth_proto::{PROTOCOL, PROTOCOL_METADATA};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::broker::{AuthState, Broker, DaemonStatus, ServerView, StoreKeyStatus};
use crate::config::{NewServer, ServerName};
use crate::context::{Event, EventKind};
use crate::error::{BrokerError, NextStep};
use crate::import::{ImportItem, Tool, Verdict};
use crate::listener::Connection;
use crate::login::{FailureKind, LoginMethod, LoginOptions, LoginOutcome};
use crate::oauth::flow::CallbackParams;
use crate::scheduler::Plan;

pub struct BrokerService {
    broker: Arc<Broker>,
}

impl BrokerService {
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }

    pub fn into_server(self) -> broker_server::BrokerServer<Self> {
        broker_server::BrokerServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

/// The largest request accepted. Every real request is far smaller (the
/// largest field, a WWW-Authenticate value, is capped at 16 KiB).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Calls in flight on one connection, at most; more wait in the client.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

impl Connected for Connection {
    type ConnectInfo = <tokio::net::UnixStream as Connected>::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream().connect_info()
    }
}

/// Serves the broker on the accepted connections until `shutdown`.
pub async fn serve(
    broker: Arc<Broker>,
    incoming: mpsc::Receiver<std::io::Result<Connection>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .add_service(BrokerService::new(broker).into_server())
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), shutdown)
        .await
        .map_err(|e| e.to_string())
}

/// Refuses a client that announces another protocol. A client that sends
/// nothing (grpcurl, another language) is served: the contract is the
/// `.proto`, and a mismatch shows up there as unknown fields.
fn check_protocol<T>(request: &Request<T>) -> Result<(), Status> {
    let Some(value) = request.metadata().get(PROTOCOL_METADATA) else {
        return Ok(());
    };
    match value.to_str().ok().and_then(|v| v.parse::<u32>().ok()) {
        Some(PROTOCOL) => Ok(()),
        Some(theirs) => Err(with_next_step(
            Status::failed_precondition(format!(
                "protocol mismatch: the client speaks mcpauth protocol {theirs}, this mcpauthd {} speaks {PROTOCOL}; \
                 restart the daemon with the matching version",
                env!("CARGO_PKG_VERSION")
            )),
            Some(NextStep::StopDaemon),
        )),
        None => Err(Status::invalid_argument(format!(
            "{PROTOCOL_METADATA} must be a number"
        ))),
    }
}

/// The wire form of a next step.
fn next_step(step: NextStep) -> pb::NextStep {
    use pb::next_step::Kind;
    let (kind, server, idp) = match step {
        NextStep::Login { server } => (Kind::Login, server, String::new()),
        NextStep::LoginAtIdp { idp } => (Kind::LoginAtIdp, String::new(), idp),
        NextStep::LoginWithDevice { server } => (Kind::LoginWithDevice, server, String::new()),
        NextStep::LoginWithChallenge { server } => {
            (Kind::LoginWithChallenge, server, String::new())
        }
        NextStep::ShowOrRemove { server } => (Kind::ShowOrRemove, server, String::new()),
        NextStep::GetToken { server } => (Kind::GetToken, server, String::new()),
        NextStep::SetClientId { server } => {
            (Kind::SetClientId, server.unwrap_or_default(), String::new())
        }
        NextStep::StopDaemon => (Kind::StopDaemon, String::new(), String::new()),
    };
    pb::NextStep {
        kind: kind as i32,
        server,
        idp,
    }
}

/// `status` with the next step in its details (an encoded `ErrorDetail`),
/// its metadata kept.
fn with_next_step(status: Status, step: Option<NextStep>) -> Status {
    let Some(step) = step else {
        return status;
    };
    let detail = pb::ErrorDetail {
        next_step: Some(next_step(step)),
    };
    let mut with = Status::with_details(
        status.code(),
        status.message(),
        prost::Message::encode_to_vec(&detail).into(),
    );
    *with.metadata_mut() = status.metadata().clone();
    with
}

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Self {
        let step = e.next_step();
        with_next_step(status_of(e), step)
    }
}

/// The code (and metadata) a broker error answers with.
fn status_of(e: BrokerError) -> Status {
    let message = e.to_string();
    match e {
        BrokerError::StepUpRequired { scopes, .. } => {
            let mut status = Status::permission_denied(message);
            if let Ok(value) = scopes.join(" ").parse() {
                status.metadata_mut().insert("mcpauth-step-up", value);
            }
            status
        }
        BrokerError::StepUpExhausted { .. } => Status::resource_exhausted(message),
        BrokerError::Unavailable {
            retry_after_secs, ..
        }
        | BrokerError::ServerRejecting {
            retry_after_secs, ..
        } => {
            let mut status = Status::unavailable(message);
            status
                .metadata_mut()
                .insert("retry-after", retry_after_secs.into());
            status
        }
        BrokerError::NotFound(..) => Status::not_found(message),
        BrokerError::NameTooAlike { .. } => Status::already_exists(message),
        BrokerError::AlreadyExists(_) => Status::already_exists(message),
        BrokerError::Invalid(_) => Status::invalid_argument(message),
        BrokerError::ConfigBroken(_) => Status::failed_precondition(message),
        // A locked store: the one line says why and what to do.
        ref locked @ BrokerError::Store(_) if locked.is_locked() => {
            Status::failed_precondition(message)
        }
        BrokerError::Config(_) | BrokerError::Store(_) | BrokerError::Internal(_) => {
            warn!(error = %message, "request failed");
            Status::internal(message)
        }
        BrokerError::LoginRequired { .. } => Status::unauthenticated(message),
        BrokerError::NoLoginPending(_) | BrokerError::CallbackPort { .. } => {
            Status::failed_precondition(message)
        }
        BrokerError::Callback(_) => Status::permission_denied(message),
        BrokerError::OAuth(_) => Status::failed_precondition(message),
        BrokerError::Superseded { .. } => Status::aborted(message),
        BrokerError::NoLoginNeeded { .. } => Status::failed_precondition(message),
    }
}

fn auth_state(state: AuthState) -> pb::AuthState {
    match state {
        AuthState::LoginRequired => pb::AuthState::LoginRequired,
        AuthState::LoginPending => pb::AuthState::LoginPending,
        AuthState::Authorized => pb::AuthState::Authorized,
        AuthState::RefreshFailing => pb::AuthState::RefreshFailing,
        AuthState::StepUpRequired => pb::AuthState::StepUpRequired,
        AuthState::OnDemand => pb::AuthState::OnDemand,
        AuthState::Locked => pb::AuthState::Locked,
    }
}

fn login_result(outcome: &LoginOutcome) -> pb::LoginResult {
    match outcome {
        LoginOutcome::Success {
            scopes,
            expires_at_ms,
            refresh_token,
        } => pb::LoginResult {
            ok: true,
            scopes: scopes.clone(),
            token_expires_at_unix_ms: expires_at_ms.unwrap_or(0),
            error: String::new(),
            failure: pb::LoginFailure::Unspecified.into(),
            no_refresh_token: !refresh_token,
        },
        LoginOutcome::Failed { kind, message } => pb::LoginResult {
            ok: false,
            scopes: Vec::new(),
            token_expires_at_unix_ms: 0,
            no_refresh_token: false,
            error: message.clone(),
            failure: match kind {
                FailureKind::Denied => pb::LoginFailure::Denied,
                FailureKind::TimedOut => pb::LoginFailure::TimedOut,
                FailureKind::Cancelled => pb::LoginFailure::Cancelled,
                FailureKind::Rejected => pb::LoginFailure::Rejected,
                FailureKind::Error => pb::LoginFailure::Error,
            }
            .into(),
        },
    }
}

impl From<ServerView> for pb::Server {
    fn from(v: ServerView) -> Self {
        let record = v
            .record
            .unwrap_or_else(|| crate::state::ServerRecord::new(&v.config.url, 0));
        pb::Server {
            name: v.name.to_string(),
            url: v.config.url.to_string(),
            client_id: v
                .client_id
                .as_ref()
                .map(|c| c.0.clone())
                .unwrap_or_default(),
            client_id_source: v.client_id.map(|c| c.1.to_string()).unwrap_or_default(),
            has_client_secret: v.config.client_secret.is_some(),
            scopes: v.config.scopes,
            login_hint: v.config.login_hint.unwrap_or_default(),
            callback_port: v.callback_port.map_or(0, |p| u32::from(p.0)),
            callback_port_source: v.callback_port.map(|p| p.1.to_string()).unwrap_or_default(),
            client_metadata_url: v
                .config
                .client_metadata_url
                .map(|u| u.to_string())
                .unwrap_or_default(),
            state: auth_state(v.state).into(),
            token_expires_at_unix_ms: v.token_expires_at_ms.unwrap_or(0),
            last_refresh_unix_ms: record.last_refresh_ms.unwrap_or(0),
            last_error: v.guard_error.or(record.last_error).unwrap_or_default(),
            added_at_unix_ms: record.added_at_ms,
            refresh_state: match &v.plan {
                Plan::Idle => "idle",
                Plan::Scheduled { .. } => "scheduled",
                Plan::Retrying { .. } => "retrying",
                Plan::Stopped { .. } => "stopped",
            }
            .into(),
            next_refresh_unix_ms: match &v.plan {
                Plan::Scheduled { at_ms } | Plan::Retrying { at_ms, .. } => *at_ms,
                _ => 0,
            },
            refresh_attempt: match &v.plan {
                Plan::Retrying { attempt, .. } => *attempt,
                _ => 0,
            },
            granted_scopes: v.granted_scopes,
            no_refresh_token: v.no_refresh_token,
            account: v.account.unwrap_or_default(),
            grant: v.config.grant.as_str().into(),
            identity_provider: v
                .config
                .identity_provider
                .map(|i| i.to_string())
                .unwrap_or_default(),
        }
    }
}

impl From<DaemonStatus> for pb::StatusReply {
    fn from(s: DaemonStatus) -> Self {
        pb::StatusReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: PROTOCOL,
            pid: s.pid,
            uptime_ms: s.uptime_ms,
            socket_path: s.paths.socket.display().to_string(),
            state_dir: s.paths.state_dir.display().to_string(),
            config_path: s.paths.config.display().to_string(),
            config: Some(pb::ConfigHealth {
                loaded_at_unix_ms: s.config.loaded_at_ms,
                error: s.config.error.unwrap_or_default(),
                error_at_unix_ms: s.config.error_at_ms,
            }),
            servers: s.servers.into_iter().map(Into::into).collect(),
            socket_activated: s.socket_activated,
            store_key: match &s.store_key {
                StoreKeyStatus::Keyring => "keyring",
                StoreKeyStatus::File(_) => "file",
                StoreKeyStatus::Locked(_) => "locked",
            }
            .into(),
            store_key_detail: match s.store_key {
                StoreKeyStatus::Keyring => String::new(),
                StoreKeyStatus::File(path) => path.display().to_string(),
                StoreKeyStatus::Locked(why) => why,
            },
        }
    }
}

impl From<Event> for pb::Event {
    fn from(e: Event) -> Self {
        use pb::event::Kind;
        let kind = match e.kind {
            EventKind::ServerAdded { url } => Kind::ServerAdded(pb::ServerAdded { url }),
            EventKind::ServerRemoved => Kind::ServerRemoved(pb::ServerRemoved {}),
            EventKind::ServerChanged { url } => Kind::ServerChanged(pb::ServerChanged { url }),
            EventKind::ConfigRejected { error } => {
                Kind::ConfigRejected(pb::ConfigRejected { error })
            }
            EventKind::ConfigAccepted => Kind::ConfigAccepted(pb::ConfigAccepted {}),
            EventKind::LoginStarted => Kind::LoginStarted(pb::LoginStartedEvent {}),
            EventKind::TokenIssued {
                generation,
                expires_at_ms,
            } => Kind::TokenIssued(pb::TokenIssued {
                generation,
                expires_at_unix_ms: expires_at_ms.unwrap_or(0),
            }),
            EventKind::LoginRequired { reason } => {
                Kind::LoginRequired(pb::LoginRequired { reason })
            }
            EventKind::StepUpRequired { scopes } => {
                Kind::StepUpRequired(pb::StepUpRequired { scopes })
            }
        };
        pb::Event {
            at_unix_ms: e.at_ms,
            server: e.server.map(|s| s.to_string()).unwrap_or_default(),
            kind: Some(kind),
        }
    }
}

fn token_reply(grant: crate::state::Grant) -> pb::TokenReply {
    pb::TokenReply {
        // The one place a token leaves the daemon.
        access_token: grant.access_token.expose().to_string(),
        token_type: grant.token_type,
        expires_at_unix_ms: grant.expires_at_ms.unwrap_or(0),
        scopes: grant.scopes,
        generation: grant.generation,
        server_url: grant.server_url,
        resource: grant.resource,
    }
}

fn revocation(r: &crate::oauth::token::Revocation) -> pb::TokenRevocation {
    use crate::oauth::token::Revocation;
    let (outcome, detail) = match r {
        Revocation::Revoked => ("revoked", String::new()),
        Revocation::NotOffered => ("not_offered", String::new()),
        Revocation::Unsupported => ("unsupported", String::new()),
        Revocation::Refused { .. } => ("refused", r.to_string()),
        Revocation::Failed(reason) => ("failed", reason.clone()),
    };
    pb::TokenRevocation {
        outcome: outcome.into(),
        detail,
    }
}

fn optional(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send + 'static>>;
type LoginStream = Pin<Box<dyn Stream<Item = Result<pb::LoginEvent, Status>> + Send + 'static>>;

/// The query of a pasted redirect URL, checked to be our callback.
fn pasted_callback(url: &str, expected_redirect: Option<&str>) -> Result<CallbackParams, Status> {
    let url = url::Url::parse(url.trim()).map_err(|_| {
        Status::invalid_argument("that is not a URL; paste the whole address from the browser")
    })?;
    if let Some(expected) = expected_redirect.and_then(|e| url::Url::parse(e).ok())
        && (url.host() != expected.host()
            || url.port() != expected.port()
            || url.path() != expected.path())
    {
        return Err(Status::invalid_argument(format!(
            "that URL is not this login's callback ({}); paste the address the browser was sent to",
            expected
        )));
    }
    Ok(CallbackParams::from_query(url.query().unwrap_or("")))
}

#[tonic::async_trait]
impl broker_server::Broker for BrokerService {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        Ok(Response::new(self.broker.status()?.into()))
    }

    async fn shutdown(
        &self,
        _request: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownReply>, Status> {
        tracing::info!("shutdown requested by a client");
        self.broker.shutdown().trigger();
        Ok(Response::new(pb::ShutdownReply {}))
    }

    async fn list_servers(
        &self,
        request: Request<pb::ListServersRequest>,
    ) -> Result<Response<pb::ListServersReply>, Status> {
        check_protocol(&request)?;
        let servers = self.broker.list()?.into_iter().map(Into::into).collect();
        Ok(Response::new(pb::ListServersReply { servers }))
    }

    async fn get_server(
        &self,
        request: Request<pb::GetServerRequest>,
    ) -> Result<Response<pb::Server>, Status> {
        check_protocol(&request)?;
        Ok(Response::new(
            self.broker.get(&request.into_inner().name)?.into(),
        ))
    }

    async fn add_server(
        &self,
        request: Request<pb::AddServerRequest>,
    ) -> Result<Response<pb::Server>, Status> {
        check_protocol(&request)?;
        let r = request.into_inner();
        let callback_port = match r.callback_port {
            0 => None,
            p => Some(u16::try_from(p).map_err(|_| {
                Status::invalid_argument(format!("callback port {p} is not a TCP port (1-65535)"))
            })?),
        };
        let new = NewServer {
            name: r.name,
            url: r.url,
            client_id: optional(r.client_id),
            client_secret_file: optional(r.client_secret_file).map(Into::into),
            scopes: r.scopes,
            callback_port,
            client_metadata_url: optional(r.client_metadata_url),
            login_hint: optional(r.login_hint),
        };
        Ok(Response::new(self.broker.add(new).await?.into()))
    }

    async fn import(
        &self,
        request: Request<pb::ImportRequest>,
    ) -> Result<Response<pb::ImportReply>, Status> {
        check_protocol(&request)?;
        let r = request.into_inner();
        if r.items.len() > 1000 {
            return Err(Status::invalid_argument("more than 1000 items to import"));
        }
        let mut items = Vec::with_capacity(r.items.len());
        for i in r.items {
            let tool = Tool::parse(&i.tool).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "unknown tool {:?} (codex, claude-code, mcp-remote, hermes)",
                    i.tool.chars().take(40).collect::<String>()
                ))
            })?;
            let path = |p: String| (!p.is_empty()).then(|| std::path::PathBuf::from(p));
            items.push(ImportItem {
                tool,
                name: i.name,
                url: i.url,
                store: path(i.store_path),
                key: optional(i.key),
                client_info: path(i.client_info_path),
                keyring: i.keyring,
            });
        }
        let outcomes = self.broker.import(items, r.dry_run).await?;
        Ok(Response::new(pb::ImportReply {
            results: outcomes
                .into_iter()
                .map(|o| {
                    let (verdict, reason) = match o.verdict {
                        Verdict::Adopted => (pb::ImportVerdict::Adopted, String::new()),
                        Verdict::Current(r) => (pb::ImportVerdict::Current, r),
                        Verdict::LoginNeeded(r) => (pb::ImportVerdict::LoginNeeded, r),
                        Verdict::Skipped(r) => (pb::ImportVerdict::Skipped, r),
                    };
                    pb::ImportResult {
                        tool: o.tool.id().into(),
                        tool_name: o.tool_name,
                        server: o.server,
                        url: o.url,
                        verdict: verdict.into(),
                        reason,
                        added: o.added,
                        renamed: o.renamed.unwrap_or_default(),
                    }
                })
                .collect(),
        }))
    }

    async fn remove_server(
        &self,
        request: Request<pb::RemoveServerRequest>,
    ) -> Result<Response<pb::RemoveServerReply>, Status> {
        check_protocol(&request)?;
        self.broker.remove(&request.into_inner().name).await?;
        Ok(Response::new(pb::RemoveServerReply {}))
    }

    type LoginStream = LoginStream;

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<Self::LoginStream>, Status> {
        check_protocol(&request)?;
        let r = request.into_inner();
        if r.www_authenticate.len() > 16 * 1024 {
            return Err(Status::invalid_argument(
                "www_authenticate is longer than 16 KiB",
            ));
        }
        let method = match pb::LoginMethod::try_from(r.method) {
            Ok(pb::LoginMethod::Browser) => LoginMethod::Browser,
            Ok(pb::LoginMethod::Device) => LoginMethod::Device,
            Ok(pb::LoginMethod::DeviceIfOffered) => LoginMethod::DeviceIfOffered,
            Err(_) => return Err(Status::invalid_argument("unknown login method")),
        };
        let options = LoginOptions {
            scopes: r.scopes,
            method,
            www_authenticate: optional(r.www_authenticate),
        };
        let handle = self.broker.login_with(&r.server, options).await?;
        let started = match &handle.device {
            Some(device) => pb::LoginEvent {
                kind: Some(pb::login_event::Kind::Device(pb::DeviceAuthorization {
                    user_code: device.user_code.clone(),
                    verification_uri: device.verification_uri.clone(),
                    verification_uri_complete: device
                        .verification_uri_complete
                        .clone()
                        .unwrap_or_default(),
                    expires_at_unix_ms: device.expires_at_ms,
                    interval_secs: u32::try_from(device.interval_secs).unwrap_or(u32::MAX),
                    joined: handle.joined,
                })),
            },
            None => pb::LoginEvent {
                kind: Some(pb::login_event::Kind::Started(pb::LoginStarted {
                    authorization_url: handle.flow.authorization_url.clone(),
                    redirect_uri: handle.flow.redirect_uri.clone(),
                    callback_port: u32::from(handle.callback_port),
                    joined: handle.joined,
                    expires_at_unix_ms: handle.flow.expires_at_ms,
                    device_offered: handle.device_offered,
                })),
            },
        };
        let (tx, rx) = mpsc::channel(2);
        let mut outcome = handle.outcome;
        let shutdown = self.broker.shutdown().wait();
        tokio::spawn(async move {
            if tx.send(Ok(started)).await.is_err() {
                return;
            }
            tokio::pin!(shutdown);
            let result = tokio::select! {
                _ = &mut shutdown => return,
                _ = tx.closed() => return,
                r = outcome.wait_for(Option::is_some) => match r {
                    Ok(o) => o.clone(),
                    Err(_) => return,
                },
            };
            if let Some(result) = result {
                let _ = tx
                    .send(Ok(pb::LoginEvent {
                        kind: Some(pb::login_event::Kind::Finished(login_result(&result))),
                    }))
                    .await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn complete_login(
        &self,
        request: Request<pb::CompleteLoginRequest>,
    ) -> Result<Response<pb::LoginResult>, Status> {
        check_protocol(&request)?;
        let r = request.into_inner();
        let name = ServerName::parse(&r.server).map_err(BrokerError::from)?;
        let expected = self
            .broker
            .store()
            .flow(&name)
            .map_err(BrokerError::from)?
            .map(|f| f.redirect_uri);
        let params = pasted_callback(&r.redirect_url, expected.as_deref())?;
        let outcome = self.broker.complete_login(&r.server, params).await?;
        Ok(Response::new(login_result(&outcome)))
    }

    async fn cancel_login(
        &self,
        request: Request<pb::CancelLoginRequest>,
    ) -> Result<Response<pb::CancelLoginReply>, Status> {
        check_protocol(&request)?;
        let cancelled = self
            .broker
            .cancel_login(&request.into_inner().server)
            .await?;
        Ok(Response::new(pb::CancelLoginReply { cancelled }))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutReply>, Status> {
        check_protocol(&request)?;
        let r = request.into_inner();
        let outcome = self.broker.logout(&r.server, r.forget_client).await?;
        Ok(Response::new(pb::LogoutReply {
            revoked: outcome.all_revoked(),
            held: outcome.held,
            access_token_revocation: outcome.access.as_ref().map(revocation),
            refresh_token_revocation: outcome.refresh.as_ref().map(revocation),
            access_token_expires_at_unix_ms: outcome.access_expires_at_ms.unwrap_or(0),
        }))
    }

    async fn doctor(
        &self,
        request: Request<pb::DoctorRequest>,
    ) -> Result<Response<pb::DoctorReply>, Status> {
        check_protocol(&request)?;
        let steps = self.broker.doctor(&request.into_inner().server).await?;
        Ok(Response::new(pb::DoctorReply {
            steps: steps
                .into_iter()
                .map(|s| pb::DoctorStep {
                    step: s.step.into(),
                    found: s.found,
                    ok: s.ok,
                    fix: s.fix.unwrap_or_default(),
                    next_step: s.next.map(next_step),
                })
                .collect(),
        }))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshReply>, Status> {
        check_protocol(&request)?;
        let grant = self.broker.refresh(&request.into_inner().server).await?;
        Ok(Response::new(pb::RefreshReply {
            token_expires_at_unix_ms: grant.expires_at_ms.unwrap_or(0),
            scopes: grant.scopes,
            generation: grant.generation,
        }))
    }

    async fn get_token(
        &self,
        request: Request<pb::GetTokenRequest>,
    ) -> Result<Response<pb::TokenReply>, Status> {
        check_protocol(&request)?;
        let r = request.into_inner();
        let min_ttl = r.min_ttl_secs.map_or(crate::tokens::DEFAULT_MIN_TTL, |s| {
            std::time::Duration::from_secs(u64::from(s))
        });
        let grant = if r.headers_helper {
            self.broker.helper_token(&r.server, min_ttl).await?
        } else {
            self.broker.get_token(&r.server, min_ttl).await?
        };
        Ok(Response::new(token_reply(grant)))
    }

    async fn report_unauthorized(
        &self,
        request: Request<pb::ReportUnauthorizedRequest>,
    ) -> Result<Response<pb::TokenReply>, Status> {
        check_protocol(&request)?;
        let r = request.into_inner();
        if r.token_sha256.len() != 64 || !r.token_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument(
                "token_sha256 must be the hex SHA-256 of the rejected token (never the token itself)",
            ));
        }
        if r.www_authenticate.len() > 16 * 1024 {
            return Err(Status::invalid_argument(
                "www_authenticate is longer than 16 KiB",
            ));
        }
        let grant = self
            .broker
            .report_unauthorized(
                &r.server,
                &r.token_sha256,
                r.http_status,
                &r.www_authenticate,
            )
            .await?;
        Ok(Response::new(token_reply(grant)))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        check_protocol(&request)?;
        // An unknown name is refused at once, as by every other call.
        let filter = match optional(request.into_inner().server) {
            None => None,
            Some(name) => Some(self.broker.configured(&name)?),
        };
        let mut events = self.broker.subscribe();
        let shutdown = self.broker.shutdown().wait();
        let (tx, rx) = mpsc::channel(16);
        // The stream ends when the daemon shuts down, so an open Watch
        // never holds up a graceful shutdown, or when the client goes away.
        tokio::spawn(async move {
            tokio::pin!(shutdown);
            loop {
                let event = tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tx.closed() => break,
                    event = events.recv() => event,
                };
                let item = match event {
                    Ok(event) => {
                        if filter
                            .as_ref()
                            .is_some_and(|f| event.server.as_ref() != Some(f))
                        {
                            continue;
                        }
                        Ok(event.into())
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        Err(Status::resource_exhausted(format!(
                            "the watcher fell {n} events behind; reconnect and re-read the state"
                        )))
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                let last = item.is_err();
                if tx.send(item).await.is_err() || last {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_with(protocol: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(p) = protocol {
            r.metadata_mut()
                .insert(PROTOCOL_METADATA, p.parse().unwrap());
        }
        r
    }

    #[test]
    fn protocol_handshake() {
        assert!(check_protocol(&request_with(None)).is_ok());
        assert!(check_protocol(&request_with(Some(&PROTOCOL.to_string()))).is_ok());
        let err = check_protocol(&request_with(Some("999"))).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("protocol 999"), "{}", err.message());
        assert_eq!(
            check_protocol(&request_with(Some("x"))).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
