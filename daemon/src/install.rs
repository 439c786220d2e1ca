//! The one place that installs a grant: the `Installer` part.
//!
//! A login, a refresh and an import all end here, under the server's
//! [`ServerGuard`]. Installing means, in this order:
//! 1. the binding is checked: the server is still configured with the URL
//!    its record belongs to, and the grant's issuer is the authorization
//!    server discovered for it (a grant is never installed for another
//!    server, even when its URL changed while the grant was being
//!    obtained);
//! 2. the generation is bumped past every generation this server ever
//!    had (the record keeps the high-water mark, so generations only grow,
//!    across logouts too);
//! 3. grant and record are written in one transaction and flushed;
//! 4. the backoff of the previous grant ends;
//! 5. the token files are exported (awaited, not queued, so no export can
//!    be skipped);
//! 6. `TokenIssued` is published.
//!
//! Only then does the caller get the grant.

use std::sync::Arc;

use tracing::{info, warn};

use crate::backoff::Backoffs;
use crate::context::{Context, EventKind};
use crate::desktop::Notices;
use crate::error::BrokerError;
use crate::files::TokenFiles;
use crate::locks::ServerGuard;
use crate::secret::Secret;
use crate::state::{Grant, ServerRecord};

/// Where a new grant came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantSource {
    /// An authorization-code (or other interactive) login.
    Login,
    /// A refresh of the grant held.
    Refresh,
    /// A token file or another tool's store.
    Import,
}

impl GrantSource {
    fn as_str(self) -> &'static str {
        match self {
            GrantSource::Login => "login",
            GrantSource::Refresh => "refresh",
            GrantSource::Import => "import",
        }
    }
}

/// A grant as obtained, before it has a generation.
#[derive(Debug)]
pub struct NewGrant {
    pub issuer: String,
    pub client_id: String,
    pub resource: String,
    pub access_token: Secret,
    pub token_type: String,
    pub refresh_token: Option<Secret>,
    pub expires_at_ms: Option<i64>,
    pub scopes: Vec<String>,
    /// Whose tokens these are, from the ID token (see
    /// [`crate::oauth::jwt::account_of`]); the access token's `sub` is
    /// tried at install when this is `None`.
    pub account: Option<String>,
}

/// The installer holds no lock of its own: it runs under the caller's
/// `ServerGuard`, and what it changes besides the store (the backoff, the
/// notices, the token file) has its own.
pub struct Installer {
    ctx: Arc<Context>,
    backoffs: Arc<Backoffs>,
    files: Arc<TokenFiles>,
    notices: Arc<Notices>,
}

impl Installer {
    pub fn new(
        ctx: Arc<Context>,
        backoffs: Arc<Backoffs>,
        files: Arc<TokenFiles>,
        notices: Arc<Notices>,
    ) -> Self {
        Self {
            ctx,
            backoffs,
            files,
            notices,
        }
    }

    /// Installs `new` as `guard`'s server's grant; see the module doc.
    /// `change` updates the server's record in the same transaction.
    pub(crate) async fn install_grant(
        &self,
        guard: &ServerGuard,
        new: NewGrant,
        source: GrantSource,
        change: impl FnOnce(&mut ServerRecord),
    ) -> Result<Grant, BrokerError> {
        let name = guard.name();
        let discard = |reason: &str| {
            warn!(server = %name, source = source.as_str(), %reason, "new grant discarded");
            BrokerError::Superseded {
                server: name.to_string(),
                reason: reason.to_string(),
            }
        };
        let configured_url = self
            .ctx
            .config()
            .servers
            .get(name)
            .map(|s| s.url.to_string());
        let Some(mut record) = self.ctx.store().server(name)? else {
            return Err(discard("the server is no longer configured"));
        };
        if configured_url.as_deref() != Some(record.url.as_str()) {
            return Err(discard("the server's URL changed while it was obtained"));
        }
        match record.discovery.as_ref() {
            Some(d) if d.issuer == new.issuer => {}
            Some(_) => {
                return Err(discard(
                    "it was issued by another authorization server than the server's own",
                ));
            }
            None => return Err(discard("the server's authorization server is not known")),
        }
        let now = self.ctx.now_ms();
        let current = self.ctx.store().grant(name)?;
        let generation = current
            .as_ref()
            .map_or(0, |g| g.generation)
            .max(record.last_generation)
            + 1;
        // Whose tokens: what this answer says, else the same grant's
        // (a refresh of it), else nothing.
        let account = new
            .account
            .or_else(|| crate::oauth::jwt::access_token_subject(&new.access_token))
            .or_else(|| {
                current
                    .as_ref()
                    .filter(|g| {
                        source == GrantSource::Refresh
                            && g.issuer == new.issuer
                            && g.client_id == new.client_id
                    })
                    .and_then(|g| g.account.clone())
            });
        let grant = Grant {
            account,
            issuer: new.issuer,
            client_id: new.client_id,
            resource: new.resource,
            access_token: new.access_token,
            token_type: new.token_type,
            refresh_token: new.refresh_token,
            expires_at_ms: new.expires_at_ms,
            scopes: new.scopes,
            obtained_at_ms: now,
            generation,
            server_url: record.url.clone(),
        };
        record.last_generation = generation;
        record.last_error = None;
        // LAST REFRESH is that of the grant in force.
        record.last_refresh_ms = (source == GrantSource::Refresh).then_some(now);
        change(&mut record);
        self.ctx
            .store()
            .install_grant(guard, &grant, &record)
            .await?;
        self.backoffs.end(name);
        self.notices.person_no_longer_needed(name);
        self.files.export_token_file(name, &grant).await;
        info!(server = %name, generation, source = source.as_str(), "grant installed");
        self.ctx.publish(
            Some(name.clone()),
            EventKind::TokenIssued {
                generation,
                expires_at_ms: grant.expires_at_ms,
            },
        );
        Ok(grant)
    }
}
