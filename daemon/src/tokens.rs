//! The token service: what clients call on every request.
//!
//! - `get_token`: the current token, refreshed first (through the one
//!   refresh path) if it would expire within `min_ttl`. The margin asked
//!   for is capped at half the token's lifetime (the scheduler's rule), so
//!   short-lived tokens are refreshed about once per half-life, not on
//!   every call. A token is never handed out past its expiry.
//! - `report_unauthorized`: a resource server rejected a token. If the
//!   rejected token is not the current one, the current one is the answer
//!   (someone already recovered). A 401 triggers one refresh: every
//!   concurrent reporter of the same token joins the one refresh in
//!   flight for that generation (`inflight`) and wakes with its one
//!   result, instead of passing through the server's lock one by one. A
//!   403 `insufficient_scope` records a step-up; nothing is refreshed.
//! - Step-up (`step_up.rs`): the next login asks for the union of the
//!   scopes held and the scopes challenged, with a bound on step-up
//!   authorizations per server.
//! - `helper_token`: `get_token` for headers helpers, which hosts rerun
//!   after a 401/403 without telling the helper why. The first handout of
//!   a token costs nothing extra. A rerun that asks for the same token
//!   within [`RERUN_WINDOW_MS`] is taken as a sign of rejection: the token
//!   is checked against its server (one `ping`, shared by every rerun for
//!   [`CHECK_SHARED_MS`]), and a rejected one goes through
//!   `report_unauthorized`, so however many hosts rerun at once, one
//!   refresh happens; a server that rejects every token meets the report
//!   guard, not a loop.
//! - The report guard ([`ReportGuard`]): after a refresh a report caused,
//!   the next waits 1 s, doubling while the server keeps rejecting fresh
//!   tokens, up to 60 s. While it waits, reporters are told that the MCP
//!   server rejects the fresh token (logged once per wait, shown by
//!   `status` as the last error); the first report after it refreshes, so
//!   a grant revoked right after a refresh is found within seconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::info;

use crate::backoff::Freshness;
use crate::config::ServerName;
use crate::context::Context;
use crate::desktop::Notices;
use crate::error::BrokerError;
use crate::login::Logins;
use crate::oauth::{challenge, pkce};
use crate::refresh::Refresher;
use crate::state::Grant;
use crate::step_up::{record_step_up, store_challenge};

/// Default minimum validity of a token handed out.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(60);
/// After a refresh caused by reports, the next one waits this long, doubled
/// for each fresh token the server rejected in a row, up to
/// [`REPORT_GUARD_MAX_MS`]: a server that rejects every token costs a
/// handful of refreshes in its first minute and one a minute after, and a
/// grant revoked right after a refresh is found within seconds.
/// (Concurrent reporters of the same token share one refresh regardless.)
pub const REPORT_GUARD_FIRST_MS: i64 = 1_000;
pub const REPORT_GUARD_MAX_MS: i64 = 60_000;

/// The report guard of one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportGuard {
    /// When a report last caused a refresh (Unix ms).
    pub refreshed_at_ms: i64,
    /// How many of those refreshes came while the one before was still
    /// recent: fresh tokens the server rejected in a row.
    pub rejections: u32,
    /// Whether this wait was logged already.
    pub announced: bool,
}

impl ReportGuard {
    /// How long after `refreshed_at_ms` reports refresh again.
    pub fn wait_ms(&self) -> i64 {
        REPORT_GUARD_FIRST_MS
            .saturating_mul(1i64 << self.rejections.min(16))
            .min(REPORT_GUARD_MAX_MS)
    }

    /// The guard after a report-caused refresh at `now_ms`: a rejection
    /// in a row if the previous one is still recent (within twice its
    /// wait), else a new episode.
    pub fn after_refresh(previous: Option<ReportGuard>, now_ms: i64) -> ReportGuard {
        let rejections = match previous {
            Some(p) if now_ms - p.refreshed_at_ms < 2 * p.wait_ms() => p.rejections + 1,
            _ => 0,
        };
        ReportGuard {
            refreshed_at_ms: now_ms,
            rejections,
            announced: false,
        }
    }
}
/// A headers helper asking again for the token it was given this recently
/// is checked against the server first.
pub const RERUN_WINDOW_MS: i64 = 30_000;
/// How long one check's verdict answers every rerun.
pub const CHECK_SHARED_MS: i64 = 10_000;

/// What the server said of a token a helper handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    /// Accepted, or no answer that says otherwise (network trouble: the
    /// host's own retry will tell).
    Fine,
    Rejected {
        status: u16,
        challenge: String,
    },
}

/// Per server: the token a helper last handed out, and the last check.
#[derive(Default)]
struct HelperState {
    handed_out: Option<(u64, i64)>,
    checked: Option<(u64, i64, Verdict)>,
}

/// The helpers' bookkeeping, one async lock per server so a check is one
/// flight for every rerun.
#[derive(Default)]
pub struct HelperChecks {
    map: std::sync::Mutex<
        std::collections::HashMap<ServerName, Arc<tokio::sync::Mutex<HelperState>>>,
    >,
}

impl HelperChecks {
    fn slot(&self, name: &ServerName) -> Arc<tokio::sync::Mutex<HelperState>> {
        self.map
            .lock()
            .unwrap()
            .entry(name.clone())
            .or_default()
            .clone()
    }
}

/// The validity to demand of a token obtained at `obtained_ms` that
/// expires at `expires_ms`: what the caller asked for, but never more than
/// half the token's lifetime.
pub fn capped_margin(asked: Duration, obtained_ms: i64, expires_ms: i64) -> i64 {
    let asked = i64::try_from(asked.as_millis()).unwrap_or(i64::MAX);
    asked.min((expires_ms - obtained_ms).max(0) / 2)
}

/// Refreshes caused by reports, in flight: the generation they replace and
/// where their one result is published.
type InflightResult = tokio::sync::watch::Receiver<Option<Result<Grant, BrokerError>>>;

/// The token service. Its locks, none held across an await but the
/// helper checks':
/// - `report_guards` (`std::sync::Mutex`): each server's report guard;
/// - `inflight` (`std::sync::Mutex`): the refresh each server's reporters
///   share, by generation; the reporters wait on its channel, not on a
///   lock;
/// - `helper_checks`: one `tokio::sync::Mutex` per server, held across
///   the one outbound check of a helper's token so every rerun shares it.
pub struct TokenService {
    ctx: Arc<Context>,
    refresher: Arc<Refresher>,
    notices: Arc<Notices>,
    logins: Arc<Logins>,
    helper_checks: HelperChecks,
    report_guards: Mutex<HashMap<ServerName, ReportGuard>>,
    inflight: Mutex<HashMap<ServerName, (u64, InflightResult)>>,
}

impl TokenService {
    pub fn new(
        ctx: Arc<Context>,
        refresher: Arc<Refresher>,
        notices: Arc<Notices>,
        logins: Arc<Logins>,
    ) -> Self {
        Self {
            ctx,
            refresher,
            notices,
            logins,
            helper_checks: HelperChecks::default(),
            report_guards: Mutex::default(),
            inflight: Mutex::default(),
        }
    }

    /// Drops the report guard of a server whose state was deleted.
    pub(crate) fn forget(&self, name: &ServerName) {
        self.report_guards.lock().unwrap().remove(name);
    }

    /// The grant held for `name`, or "login required".
    fn held_grant(&self, name: &ServerName) -> Result<Grant, BrokerError> {
        self.ctx
            .store()
            .grant(name)?
            .ok_or_else(|| self.ctx.login_required(name))
    }

    /// The current token, valid for at least `min_ttl` if it can be made
    /// so. When a person must act, they are told (see `desktop.rs`).
    pub async fn get_token(
        self: &Arc<Self>,
        name: &str,
        min_ttl: Duration,
    ) -> Result<Grant, BrokerError> {
        let name = self.ctx.configured(name)?;
        let result = self.get_token_for(&name, min_ttl).await;
        self.tell_person_if_needed(&name, &result);
        result
    }

    fn tell_person_if_needed(&self, name: &ServerName, result: &Result<Grant, BrokerError>) {
        match result {
            _ if self.logins.is_active(name) => {}
            Err(BrokerError::LoginRequired { .. }) => self.notices.person_needed(name, false),
            Err(BrokerError::StepUpRequired { .. }) => self.notices.person_needed(name, true),
            _ => {}
        }
    }

    async fn get_token_for(
        self: &Arc<Self>,
        name: &ServerName,
        min_ttl: Duration,
    ) -> Result<Grant, BrokerError> {
        let name = name.clone();
        if self.ctx.unattended(&name).is_some() && self.ctx.store().grant(&name)?.is_none() {
            // No person needed: the first token is obtained now, through
            // the one refresh path.
            return self
                .refresher
                .refresh_grant(name, Freshness::UnlessValidForMs(0))
                .await;
        }
        let grant = self.held_grant(&name)?;
        let now = self.ctx.now_ms();
        let Some(expires_at) = grant.expires_at_ms else {
            // Unknown expiry: used until rejected.
            return Ok(grant);
        };
        let min_ttl_ms = capped_margin(min_ttl, grant.obtained_at_ms, expires_at);
        if expires_at - now >= min_ttl_ms {
            return Ok(grant);
        }
        match self
            .refresher
            .refresh_grant(name.clone(), Freshness::UnlessValidForMs(min_ttl_ms))
            .await
        {
            Ok(fresh) => Ok(fresh),
            // The AS is down but the token held still works: better than nothing.
            Err(BrokerError::Unavailable { .. }) if expires_at > self.ctx.now_ms() => Ok(grant),
            Err(e) => Err(e),
        }
    }

    /// `get_token` for a headers helper; see the module doc.
    pub async fn helper_token(
        self: &Arc<Self>,
        name: &str,
        min_ttl: Duration,
    ) -> Result<Grant, BrokerError> {
        let grant = self.get_token(name, min_ttl).await?;
        let name = self.ctx.configured(name)?;
        let slot = self.helper_checks.slot(&name);
        let verdict = {
            let mut state = slot.lock().await;
            let now = self.ctx.now_ms();
            let repeat = state.handed_out.is_some_and(|(generation, at)| {
                generation == grant.generation && now - at < RERUN_WINDOW_MS
            });
            if !repeat {
                state.handed_out = Some((grant.generation, now));
                return Ok(grant);
            }
            match &state.checked {
                Some((generation, at, verdict))
                    if *generation == grant.generation && now - at < CHECK_SHARED_MS =>
                {
                    verdict.clone()
                }
                _ => {
                    let verdict = self.check_with_server(&name, &grant).await;
                    state.checked = Some((grant.generation, self.ctx.now_ms(), verdict.clone()));
                    verdict
                }
            }
        };
        match verdict {
            Verdict::Fine => Ok(grant),
            Verdict::Rejected { status, challenge } => {
                info!(server = %name, status, "a headers helper's token was rejected by the server; replacing it");
                let fingerprint = pkce::fingerprint(grant.access_token.expose());
                self.report_unauthorized(name.as_str(), &fingerprint, u32::from(status), &challenge)
                    .await
            }
        }
    }

    /// One `ping` with the token to its own server.
    async fn check_with_server(&self, name: &ServerName, grant: &Grant) -> Verdict {
        let Some(url) = self.ctx.config().servers.get(name).map(|s| s.url.clone()) else {
            return Verdict::Fine;
        };
        match self.ctx.http.check_token(&url, &grant.access_token).await {
            Ok((status @ (401 | 403), challenges)) => {
                // A 403 is a rejection only when it is about the token.
                let about_scope = challenge::bearer(challenges.iter().map(String::as_str))
                    .is_some_and(|b| b.error.as_deref() == Some("insufficient_scope"));
                if status == 403 && !about_scope {
                    return Verdict::Fine;
                }
                Verdict::Rejected {
                    status,
                    challenge: challenges.join(", "),
                }
            }
            Ok(_) => Verdict::Fine,
            Err(e) => {
                tracing::debug!(server = %name, error = %e, "could not check a helper's token");
                Verdict::Fine
            }
        }
    }

    /// Handles a resource server's rejection of the token with this
    /// fingerprint (hex SHA-256).
    pub async fn report_unauthorized(
        self: &Arc<Self>,
        name: &str,
        fingerprint: &str,
        http_status: u32,
        www_authenticate: &str,
    ) -> Result<Grant, BrokerError> {
        let name = self.ctx.configured(name)?;
        let result = self
            .report_for(&name, fingerprint, http_status, www_authenticate)
            .await;
        self.tell_person_if_needed(&name, &result);
        result
    }

    async fn report_for(
        self: &Arc<Self>,
        name: &ServerName,
        fingerprint: &str,
        http_status: u32,
        www_authenticate: &str,
    ) -> Result<Grant, BrokerError> {
        let name = name.clone();
        if self.ctx.store().grant(&name)?.is_none() {
            if self.ctx.unattended(&name).is_some() {
                return self
                    .refresher
                    .refresh_grant(name, Freshness::UnlessValidForMs(0))
                    .await;
            }
            // A client met a challenge before any login: what it asks for
            // is authoritative for the next login.
            store_challenge(&self.ctx, &name, www_authenticate).await?;
        }
        let grant = self.held_grant(&name)?;
        if !fingerprint.eq_ignore_ascii_case(&pkce::fingerprint(grant.access_token.expose())) {
            // Someone already recovered: hand out the current token.
            return Ok(grant);
        }
        let bearer = challenge::bearer([www_authenticate]).unwrap_or_default();
        if http_status == 403 && bearer.error.as_deref() == Some("insufficient_scope") {
            let scopes = record_step_up(&self.ctx, &name, &grant, &bearer.scopes()).await?;
            return Err(BrokerError::StepUpRequired {
                server: name.to_string(),
                scopes,
            });
        }
        let now = self.ctx.now_ms();
        let guard = self.report_guards.lock().unwrap().get(&name).copied();
        if let Some(guard) = guard.filter(|g| now - g.refreshed_at_ms < g.wait_ms()) {
            // The guard is for a server rejecting the token that a report
            // just produced. A reporter that read the grant before that
            // refresh was installed holds an older one: it gets the
            // current token, like any stale reporter.
            let current = self.held_grant(&name)?;
            if current.generation != grant.generation {
                return Ok(current);
            }
            let retry_ms = guard.refreshed_at_ms + guard.wait_ms() - now;
            let reason = guard_reason(&name, now - guard.refreshed_at_ms, retry_ms);
            if !guard.announced {
                tracing::warn!(server = %name, rejections = guard.rejections + 1, retry_after_ms = retry_ms, "the server rejected a freshly refreshed token; holding refreshes back");
                if let Some(g) = self.report_guards.lock().unwrap().get_mut(&name) {
                    g.announced = true;
                }
            }
            return Err(BrokerError::ServerRejecting {
                server: name.to_string(),
                reason,
                retry_after_secs: (retry_ms as u64).div_ceil(1000).max(1),
            });
        }
        let fresh = self.shared_refresh(&name, grant.generation).await?;
        let mut guards = self.report_guards.lock().unwrap();
        let next = ReportGuard::after_refresh(guards.get(&name).copied(), self.ctx.now_ms());
        guards.insert(name, next);
        Ok(fresh)
    }

    /// Why reports are held back for `name` right now, if they are: what
    /// `status` shows as its last error while it lasts.
    pub(crate) fn report_guard_error(&self, name: &ServerName) -> Option<String> {
        let now = self.ctx.now_ms();
        let guard = self.report_guards.lock().unwrap().get(name).copied()?;
        let retry_ms = guard.refreshed_at_ms + guard.wait_ms() - now;
        (retry_ms > 0 && guard.announced)
            .then(|| guard_reason(name, now - guard.refreshed_at_ms, retry_ms))
    }

    /// Joins the refresh in flight for this generation of the grant, or
    /// starts it. Every reporter of the same rejected token waits on one
    /// channel and is woken at once with the one result, instead of
    /// passing through the server's lock one by one. (The refresh itself
    /// still goes through `refresh_grant`, which would skip a second
    /// request anyway.)
    async fn shared_refresh(
        self: &Arc<Self>,
        name: &ServerName,
        generation: u64,
    ) -> Result<Grant, BrokerError> {
        let mut rx = {
            let mut inflight = self.inflight.lock().unwrap();
            match inflight.get(name) {
                Some((g, rx)) if *g == generation => rx.clone(),
                _ => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    inflight.insert(name.clone(), (generation, rx.clone()));
                    let service = self.clone();
                    let name = name.clone();
                    tokio::spawn(async move {
                        let result = service
                            .refresher
                            .refresh_grant(name.clone(), Freshness::UnlessNewerThan(generation))
                            .await;
                        tx.send_replace(Some(result));
                        let mut inflight = service.inflight.lock().unwrap();
                        if inflight.get(&name).is_some_and(|(g, _)| *g == generation) {
                            inflight.remove(&name);
                        }
                    });
                    rx
                }
            }
        };
        rx.wait_for(Option::is_some)
            .await
            .map_err(|_| BrokerError::Internal("the refresh task ended without a result".into()))?
            .clone()
            .expect("waited for Some")
    }
}

/// The words of the report guard: the MCP server's rejection, not the
/// authorization server's.
fn guard_reason(name: &ServerName, ago_ms: i64, retry_ms: i64) -> String {
    format!(
        "{name} rejected the token refreshed {}s ago; the next report refreshes again in {}s (the wait doubles while fresh tokens are rejected, up to {}s)",
        ago_ms.max(0) / 1000,
        (retry_ms.max(0) as u64).div_ceil(1000).max(1),
        REPORT_GUARD_MAX_MS / 1000
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_report_guard_allows_a_handful_of_refreshes_a_minute() {
        // Reports every 100 ms for 3 minutes to a server that rejects
        // every token: a refresh whenever the guard lets one through.
        let mut guard: Option<ReportGuard> = None;
        let mut refreshes = Vec::new();
        for t in (0..180_000).step_by(100) {
            if guard.is_none_or(|g| t - g.refreshed_at_ms >= g.wait_ms()) {
                refreshes.push(t);
                guard = Some(ReportGuard::after_refresh(guard, t));
            }
        }
        let in_first_minute = refreshes.iter().filter(|t| **t < 60_000).count();
        let in_third_minute = refreshes.iter().filter(|t| **t >= 120_000).count();
        assert_eq!(&refreshes[..4], [0, 1_000, 3_000, 7_000]);
        assert!(in_first_minute <= 7, "{refreshes:?}");
        assert!(in_third_minute <= 2, "{refreshes:?}");
        // A rejection long after the last refresh starts a new episode:
        // the next report may refresh after a second again.
        let later = ReportGuard::after_refresh(guard, 1_000_000);
        assert_eq!((later.rejections, later.wait_ms()), (0, 1_000));
    }
    use super::*;
    use crate::broker::Broker;
    use crate::clock::TokioClock;
    use crate::context::{BrokerOptions, Paths};
    use crate::error::BrokerError;
    use crate::secret::Secret;
    use crate::state::{AuthServerMetadata, Discovery, DiscoverySource, ServerRecord};

    /// A broker whose only server's AS is unreachable, holding a grant that
    /// expires at `expires_ms` on a clock that starts at 0 and follows
    /// tokio's paused time.
    async fn broker_with_grant(dir: &std::path::Path, expires_ms: i64) -> Arc<Broker> {
        let paths = Paths {
            socket: dir.join("s.sock"),
            state_dir: dir.join("state"),
            config: dir.join("config.toml"),
        };
        // Port 9 (discard) on loopback: nothing listens, connections fail.
        std::fs::write(
            &paths.config,
            "[servers.s]\nurl = \"http://127.0.0.1:9/mcp\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(&paths.state_dir).unwrap();
        let store = crate::store::Store::open(&paths.state_dir).unwrap();
        store.set_key(crate::seal::StoreKey::generate());
        let options = BrokerOptions {
            clock: TokioClock::starting_at(0),
            ..Default::default()
        };
        let broker = Broker::start(
            paths,
            store,
            false,
            crate::shutdown::Shutdown::new(),
            options,
        )
        .await
        .unwrap();
        let name = ServerName::parse("s").unwrap();
        let issuer = "http://127.0.0.1:9".to_string();
        let mut record = ServerRecord::new(&url::Url::parse("http://127.0.0.1:9/mcp").unwrap(), 0);
        record.discovery = Some(Discovery {
            resource: "http://127.0.0.1:9/mcp".into(),
            issuer: issuer.clone(),
            metadata: AuthServerMetadata {
                issuer: issuer.clone(),
                authorization_endpoint: format!("{issuer}/authorize"),
                token_endpoint: format!("{issuer}/token"),
                ..Default::default()
            },
            resource_scopes: vec![],
            source: DiscoverySource::ProtectedResource,
            settings: Default::default(),
            discovered_at_ms: 0,
        });
        let store = broker.store();
        let guard = broker.context().locks.lock(&name).await;
        store.put_server(&guard, &record).await.unwrap();
        store
            .put_registration(
                &guard,
                &crate::state::Registration {
                    issuer: issuer.clone(),
                    client_id: "c".into(),
                    client_secret: None,
                    auth_method: crate::state::ClientAuthMethod::None,
                    redirect_uri: "http://127.0.0.1:1/callback".into(),
                    kind: crate::state::RegistrationKind::Dynamic,
                    registered_at_ms: 0,
                    scopes: None,
                },
            )
            .await
            .unwrap();
        let grant = Grant {
            account: None,
            issuer,
            client_id: "c".into(),
            resource: "http://127.0.0.1:9/mcp".into(),
            access_token: Secret::new("held-token"),
            token_type: "Bearer".into(),
            refresh_token: Some(Secret::new("rt")),
            expires_at_ms: Some(expires_ms),
            scopes: vec![],
            obtained_at_ms: 0,
            generation: 1,
            server_url: record.url.clone(),
        };
        record.last_generation = 1;
        store.install_grant(&guard, &grant, &record).await.unwrap();
        drop(guard);
        broker
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_token_is_never_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let broker = broker_with_grant(dir.path(), 3_600_000).await;
        // Fresh: served without a refresh.
        let grant = broker.get_token("s", DEFAULT_MIN_TTL).await.unwrap();
        assert_eq!(grant.access_token.expose(), "held-token");

        // 30 s before expiry: a refresh is attempted and fails (the AS is
        // unreachable), but the held token is still valid, so it is served.
        tokio::time::advance(Duration::from_millis(3_600_000 - 30_000)).await;
        let before = broker.now_ms();
        let result = broker.get_token("s", DEFAULT_MIN_TTL).await;
        if broker.now_ms() < 3_600_000 {
            assert_eq!(result.unwrap().access_token.expose(), "held-token");
        }
        assert!(broker.now_ms() >= before);

        // Past expiry: never the held token.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(broker.now_ms() > 3_600_000);
        match broker.get_token("s", DEFAULT_MIN_TTL).await {
            Err(BrokerError::Unavailable { .. }) => {}
            other => panic!(
                "an expired token must not be served: {:?}",
                other.map(|g| g.generation)
            ),
        }
        broker.shutdown().trigger();
    }
}
