//! Step-up (a 403 `insufficient_scope`) and the challenges met before
//! any login: what the next login asks for.
//!
//! - A challenge met while no token is held keeps its scopes (validated
//!   tokens only, at most 32) for the next login, which takes them as
//!   authoritative.
//! - A step-up records the union of the scopes held and challenged; the
//!   next login asks for it, at most [`STEP_UP_MAX_ATTEMPTS`] step-up
//!   authorizations per server in any [`STEP_UP_WINDOW_MS`].
//!
//! Each write is under the server's `ServerGuard`.

use tracing::info;

use crate::config::ServerName;
use crate::context::{Context, EventKind};
use crate::error::BrokerError;
use crate::locks::ServerGuard;
use crate::oauth::challenge;
use crate::state::{Grant, StepUp, StoredChallenge};

/// Step-up authorizations allowed per server within [`STEP_UP_WINDOW_MS`].
pub const STEP_UP_MAX_ATTEMPTS: usize = 3;
pub const STEP_UP_WINDOW_MS: i64 = 10 * 60 * 1000;

/// Keeps the scopes of `www_authenticate` (a challenge met while no
/// token is held) for the next login. Only validated scope tokens are
/// kept, at most 32; a challenge without any leaves the stored one.
pub async fn store_challenge(
    ctx: &Context,
    name: &ServerName,
    www_authenticate: &str,
) -> Result<(), BrokerError> {
    let Some(bearer) = challenge::bearer([www_authenticate]) else {
        return Ok(());
    };
    let Some(stored) = StoredChallenge::from_scopes(&bearer.scopes(), ctx.now_ms()) else {
        return Ok(());
    };
    let guard = ctx.locks.lock(name).await;
    let held = ctx.store().server(name)?.and_then(|r| r.challenge);
    if held.is_some_and(|h| h.scopes == stored.scopes) {
        // A storm of the same report is one write.
        return Ok(());
    }
    let scopes = stored.scopes.join(" ");
    ctx.update_record(&guard, |r| r.challenge = Some(stored))
        .await?;
    info!(server = %name, %scopes, "challenge kept for the next login");
    Ok(())
}

/// Records the union of held and challenged scopes as a pending
/// step-up; returns it.
pub async fn record_step_up(
    ctx: &Context,
    name: &ServerName,
    grant: &Grant,
    challenged: &[String],
) -> Result<Vec<String>, BrokerError> {
    let guard = ctx.locks.lock(name).await;
    let mut union = grant.scopes.clone();
    let record = ctx.store().server(name)?;
    if let Some(previous) = record.as_ref().and_then(|r| r.step_up.as_ref()) {
        union.extend(previous.scopes.iter().cloned());
    }
    union.extend(challenged.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    union.retain(|s| seen.insert(s.clone()));
    let scopes = union.clone();
    ctx.update_record(&guard, |r| {
        let attempts = r.step_up.take().map(|s| s.attempts).unwrap_or_default();
        r.step_up = Some(StepUp {
            scopes: union,
            attempts,
        });
    })
    .await?;
    info!(server = %name, scopes = %scopes.join(" "), "step-up required");
    ctx.publish(
        Some(name.clone()),
        EventKind::StepUpRequired {
            scopes: scopes.clone(),
        },
    );
    Ok(scopes)
}

/// Called when a login starts with step-up scopes: enforces the bound
/// and counts the attempt.
pub async fn count_step_up_attempt(ctx: &Context, guard: &ServerGuard) -> Result<(), BrokerError> {
    let name = guard.name();
    let now = ctx.now_ms();
    let Some(mut record) = ctx.store().server(name)? else {
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
    ctx.store().put_server(guard, &record).await?;
    Ok(())
}
