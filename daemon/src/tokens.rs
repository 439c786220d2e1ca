//! The token service: what clients call on every request.
//!
//! - `get_token`: the current token, refreshed first (through the one
//!   refresh path) if it would expire within `min_ttl`. A token is never
//!   handed out past its expiry.
//! - `report_unauthorized`: a resource server rejected a token. If the
//!   rejected token is not the current one, the current one is the answer
//!   (someone already recovered). A 401 triggers one refresh: every
//!   concurrent reporter waits on the same per-server lock, and all but the
//!   first find a newer generation and get it without another request. A
//!   403 `insufficient_scope` records a step-up; nothing is refreshed.
//! - Step-up: the next login asks for the union of the scopes held and the
//!   scopes challenged, at most 3 step-up authorizations per server in any
//!   10 minutes.

use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use crate::broker::{Broker, BrokerError, EventKind};
use crate::config::ServerName;
use crate::oauth::{challenge, pkce};
use crate::refresh::Freshness;
use crate::state::{Grant, StepUp, unix_ms_now};

/// Default minimum validity of a token handed out.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(60);
/// Step-up authorizations allowed per server within [`STEP_UP_WINDOW_MS`].
pub const STEP_UP_MAX_ATTEMPTS: usize = 3;
pub const STEP_UP_WINDOW_MS: i64 = 10 * 60 * 1000;
/// At most one refresh caused by reports per server in this time: a server
/// that keeps rejecting fresh tokens would otherwise turn a storm of
/// reports into a storm of refreshes. (Concurrent reporters of the same
/// token share one refresh regardless.)
pub const REPORT_COOLDOWN_MS: i64 = 10_000;

impl Broker {
    fn known(&self, name: &str) -> Result<ServerName, BrokerError> {
        let name = ServerName::parse(name)?;
        if !self.config().servers.contains_key(&name) {
            return Err(BrokerError::NotFound(name.to_string()));
        }
        Ok(name)
    }

    fn login_required(name: &ServerName, reason: &str) -> BrokerError {
        BrokerError::LoginRequired {
            server: name.to_string(),
            reason: reason.to_string(),
        }
    }

    /// The current token, valid for at least `min_ttl` if it can be made so.
    pub async fn get_token(
        self: &Arc<Self>,
        name: &str,
        min_ttl: Duration,
    ) -> Result<Grant, BrokerError> {
        let name = self.known(name)?;
        let grant = self
            .store()
            .grant(&name)?
            .ok_or_else(|| Self::login_required(&name, "no tokens are held"))?;
        let now = unix_ms_now();
        let min_ttl_ms = min_ttl.as_millis() as i64;
        let Some(expires_at) = grant.expires_at_ms else {
            // Unknown expiry: used until rejected.
            return Ok(grant);
        };
        if expires_at - now >= min_ttl_ms {
            return Ok(grant);
        }
        match self
            .refresh_grant(name.clone(), Freshness::UnlessValidForMs(min_ttl_ms))
            .await
        {
            Ok(fresh) => Ok(fresh),
            // The AS is down but the token held still works: better than nothing.
            Err(BrokerError::Unavailable { .. }) if expires_at > unix_ms_now() => Ok(grant),
            Err(e) => Err(e),
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
        let name = self.known(name)?;
        let grant = self
            .store()
            .grant(&name)?
            .ok_or_else(|| Self::login_required(&name, "no tokens are held"))?;
        if !fingerprint.eq_ignore_ascii_case(&pkce::fingerprint(grant.access_token.expose())) {
            // Someone already recovered: hand out the current token.
            return Ok(grant);
        }
        let bearer = challenge::bearer([www_authenticate]).unwrap_or_default();
        if http_status == 403 && bearer.error.as_deref() == Some("insufficient_scope") {
            let scopes = self.record_step_up(&name, &grant, &bearer.scopes()).await?;
            return Err(BrokerError::StepUpRequired {
                server: name.to_string(),
                scopes,
            });
        }
        let now = unix_ms_now();
        let last = self.report_refreshes.lock().unwrap().get(&name).copied();
        if let Some(last) = last.filter(|last| now - last < REPORT_COOLDOWN_MS) {
            return Err(BrokerError::Unavailable {
                reason: "the server keeps rejecting freshly refreshed tokens".into(),
                retry_after_secs: ((REPORT_COOLDOWN_MS - (now - last)) / 1000).max(1) as u64,
            });
        }
        let fresh = self
            .refresh_grant(name.clone(), Freshness::UnlessNewerThan(grant.generation))
            .await?;
        self.report_refreshes
            .lock()
            .unwrap()
            .insert(name, unix_ms_now());
        Ok(fresh)
    }

    /// Records the union of held and challenged scopes as a pending
    /// step-up; returns it.
    async fn record_step_up(
        &self,
        name: &ServerName,
        grant: &Grant,
        challenged: &[String],
    ) -> Result<Vec<String>, BrokerError> {
        let mut union = grant.scopes.clone();
        let record = self.store().server(name)?;
        if let Some(previous) = record.as_ref().and_then(|r| r.step_up.as_ref()) {
            union.extend(previous.scopes.iter().cloned());
        }
        union.extend(challenged.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        union.retain(|s| seen.insert(s.clone()));
        let scopes = union.clone();
        self.update_record(name, |r| {
            let attempts = r.step_up.take().map(|s| s.attempts).unwrap_or_default();
            r.step_up = Some(StepUp {
                scopes: union,
                attempts,
            });
        })
        .await?;
        info!(server = %name, scopes = %scopes.join(" "), "step-up required");
        self.publish(
            Some(name.clone()),
            EventKind::StepUpRequired {
                scopes: scopes.clone(),
            },
        );
        Ok(scopes)
    }

    /// Called when a login starts with step-up scopes: enforces the bound
    /// and counts the attempt.
    pub(crate) async fn count_step_up_attempt(&self, name: &ServerName) -> Result<(), BrokerError> {
        let now = unix_ms_now();
        let Some(mut record) = self.store().server(name)? else {
            return Ok(());
        };
        let Some(step_up) = record.step_up.as_mut() else {
            return Ok(());
        };
        step_up.attempts.retain(|at| now - at < STEP_UP_WINDOW_MS);
        if step_up.attempts.len() >= STEP_UP_MAX_ATTEMPTS {
            return Err(BrokerError::StepUpExhausted {
                server: name.to_string(),
                attempts: step_up.attempts.len(),
            });
        }
        step_up.attempts.push(now);
        self.store().put_server(name, &record).await?;
        Ok(())
    }
}
