//! The authorization request and the validation of its callback.
//!
//! Scopes: those asked for explicitly (config, `--scope`, step-up), else
//! the challenge's `scope`, else the PRM's `scopes_supported`, else none
//! (the parameter is omitted). `offline_access` is added only when the AS
//! lists it, and dropped from server-suggested scopes when it does not.
//!
//! Callback checks, in this order, so that nothing an attacker injects is
//! acted on or shown before it is authenticated:
//! 1. `state` must equal the flow's (constant-time);
//! 2. RFC 9207 `iss` (2026-07-28 rules): advertised and present: equal;
//!    advertised and absent: reject; not advertised but present: equal;
//!    neither: proceed. Compared as plain strings;
//! 3. only then an `error` is reported;
//! 4. otherwise a `code` must be there.

use url::Url;

use super::OAuthError;
use super::challenge::BearerChallenge;
use super::http::checked;
use super::sanitize;
use crate::secret::Secret;
use crate::state::{Discovery, PendingFlow};

pub const OFFLINE_ACCESS: &str = "offline_access";

/// Chooses the scopes of an authorization request.
pub fn select_scopes(
    explicit: &[String],
    challenge: Option<&BearerChallenge>,
    discovery: &Discovery,
) -> Vec<String> {
    let as_lists_offline = discovery
        .metadata
        .scopes_supported
        .as_ref()
        .is_some_and(|s| s.iter().any(|s| s == OFFLINE_ACCESS));
    let mut scopes: Vec<String> = if !explicit.is_empty() {
        explicit.to_vec()
    } else {
        let suggested = challenge
            .map(BearerChallenge::scopes)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| discovery.resource_scopes.clone());
        suggested
            .into_iter()
            .filter(|s| s != OFFLINE_ACCESS || as_lists_offline)
            .collect()
    };
    if as_lists_offline && !scopes.is_empty() && !scopes.iter().any(|s| s == OFFLINE_ACCESS) {
        scopes.push(OFFLINE_ACCESS.into());
    }
    let mut seen = std::collections::HashSet::new();
    scopes.retain(|s| seen.insert(s.clone()));
    scopes
}

/// Builds the authorization URL (PKCE S256, state, resource, scope), and
/// the extra parameters of `authorization_params`.
pub fn authorization_url(
    discovery: &Discovery,
    client_id: &str,
    code_challenge: &str,
    state: &str,
    scopes: &[String],
    redirect_uri: &str,
) -> Result<Url, OAuthError> {
    let mut url = checked(
        "authorization endpoint",
        &discovery.metadata.authorization_endpoint,
    )?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("code_challenge", code_challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("state", state);
        // Empty only for an identity provider's own login (OIDC).
        if let Some(resource) = discovery.resource_to_send() {
            q.append_pair("resource", resource);
        }
        if !scopes.is_empty() {
            q.append_pair("scope", &scopes.join(" "));
        }
        // `authorization_params`: never one of the broker's own (the
        // config refuses them; this holds whatever the record says).
        for (name, value) in &discovery.settings.authorization_params {
            if !crate::config::RESERVED_AUTHORIZATION_PARAMS.contains(&name.as_str()) {
                q.append_pair(name, value);
            }
        }
    }
    Ok(url)
}

/// The query parameters of a callback.
#[derive(Clone, Default)]
pub struct CallbackParams {
    pub code: Option<Secret>,
    pub state: Option<String>,
    pub iss: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

impl std::fmt::Debug for CallbackParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackParams")
            .field("code", &self.code)
            .field("state", &self.state.as_ref().map(|_| "[redacted]"))
            .field("iss", &self.iss)
            .field("error", &self.error)
            .finish()
    }
}

impl CallbackParams {
    /// Parses a query string; the first occurrence of each name wins.
    pub fn from_query(query: &str) -> Self {
        let mut p = Self::default();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let v = v.into_owned();
            match k.as_ref() {
                "code" if p.code.is_none() => p.code = Some(Secret::new(v)),
                "state" if p.state.is_none() => p.state = Some(v),
                "iss" if p.iss.is_none() => p.iss = Some(v),
                "error" if p.error.is_none() => p.error = Some(v),
                "error_description" if p.error_description.is_none() => {
                    p.error_description = Some(v)
                }
                _ => {}
            }
        }
        p
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error("the callback's state does not match this login (a stale or forged redirect); ignored")]
    StateMismatch,
    #[error(
        "the callback names issuer {found:?}, not {expected:?}; refusing it (possible mix-up attack)"
    )]
    IssuerMismatch { expected: String, found: String },
    #[error(
        "the authorization server promised an iss parameter but the callback has none; refusing it (only if you trust this server, set allow_missing_iss = true for it in config.toml)"
    )]
    IssuerMissing,
    #[error("the authorization server refused: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Denied {
        error: String,
        description: Option<String>,
    },
    #[error("the callback carries neither a code nor an error")]
    MissingCode,
}

/// Validates a callback against its flow; returns the code.
pub fn validate_callback(
    flow: &PendingFlow,
    iss_advertised: bool,
    params: &CallbackParams,
) -> Result<Secret, CallbackError> {
    match &params.state {
        Some(state) if flow.state.constant_time_eq(state) => {}
        _ => return Err(CallbackError::StateMismatch),
    }
    match (&params.iss, iss_advertised) {
        (Some(iss), _) if iss != &flow.issuer => {
            return Err(CallbackError::IssuerMismatch {
                expected: flow.issuer.clone(),
                found: sanitize(iss, &[]),
            });
        }
        (None, true) => return Err(CallbackError::IssuerMissing),
        _ => {}
    }
    if let Some(error) = &params.error {
        return Err(CallbackError::Denied {
            error: sanitize(error, &[]),
            description: params
                .error_description
                .as_deref()
                .map(|d| sanitize(d, &[]))
                .filter(|d| !d.is_empty()),
        });
    }
    params.code.clone().ok_or(CallbackError::MissingCode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{AuthServerMetadata, DiscoverySource};

    fn discovery(as_scopes: Option<&[&str]>, resource_scopes: &[&str]) -> Discovery {
        Discovery {
            resource: "https://mcp.example.com/mcp".into(),
            issuer: "https://as.example.com".into(),
            metadata: AuthServerMetadata {
                issuer: "https://as.example.com".into(),
                authorization_endpoint: "https://as.example.com/authorize?tenant=1".into(),
                token_endpoint: "https://as.example.com/token".into(),
                scopes_supported: as_scopes.map(|s| s.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            },
            resource_scopes: resource_scopes.iter().map(|s| s.to_string()).collect(),
            source: DiscoverySource::ProtectedResource,
            settings: Default::default(),
            discovered_at_ms: 0,
        }
    }

    fn flow() -> PendingFlow {
        PendingFlow {
            state: Secret::new("the-state"),
            verifier: Secret::new("v"),
            issuer: "https://as.example.com".into(),
            client_id: "c".into(),
            redirect_uri: "http://127.0.0.1:1/callback".into(),
            scopes: vec![],
            authorization_url: String::new(),
            created_at_ms: 0,
            expires_at_ms: 0,
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scope_selection_order() {
        let d = discovery(None, &["prm1", "prm2"]);
        let ch = BearerChallenge {
            scope: Some("ch1 ch2".into()),
            ..Default::default()
        };
        assert_eq!(select_scopes(&s(&["x"]), Some(&ch), &d), ["x"]);
        assert_eq!(select_scopes(&[], Some(&ch), &d), ["ch1", "ch2"]);
        assert_eq!(select_scopes(&[], None, &d), ["prm1", "prm2"]);
        assert!(select_scopes(&[], None, &discovery(None, &[])).is_empty());
    }

    #[test]
    fn offline_access_only_when_the_as_lists_it() {
        let listed = discovery(Some(&["a", "offline_access"]), &["a"]);
        assert_eq!(select_scopes(&[], None, &listed), ["a", "offline_access"]);
        let unlisted = discovery(Some(&["a"]), &["a", "offline_access"]);
        assert_eq!(select_scopes(&[], None, &unlisted), ["a"]);
        // Never the only scope: that would change what the AS grants.
        assert!(select_scopes(&[], None, &discovery(Some(&["offline_access"]), &[])).is_empty());
    }

    #[test]
    fn authorization_params_add_and_never_override() {
        let mut d = discovery(None, &[]);
        d.settings.authorization_params = vec![
            ("access_type".into(), "offline".into()),
            ("state".into(), "forged".into()),
            ("resource".into(), "https://elsewhere.example".into()),
        ];
        d.settings.send_resource = false;
        let url = authorization_url(
            &d,
            "cid",
            "chal",
            "st",
            &s(&["a"]),
            "http://127.0.0.1:5/callback",
        )
        .unwrap();
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let all = |k: &str| {
            pairs
                .iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("access_type"), ["offline"]);
        assert_eq!(all("state"), ["st"]);
        assert!(
            all("resource").is_empty(),
            "send_resource = false, and never from the params"
        );
    }

    #[test]
    fn authorization_url_carries_every_parameter() {
        let url = authorization_url(
            &discovery(None, &[]),
            "cid",
            "chal",
            "st",
            &s(&["a", "b"]),
            "http://127.0.0.1:5/callback",
        )
        .unwrap();
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["tenant"], "1", "existing query kept");
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "cid");
        assert_eq!(q["code_challenge"], "chal");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["state"], "st");
        assert_eq!(q["resource"], "https://mcp.example.com/mcp");
        assert_eq!(q["scope"], "a b");
        assert_eq!(q["redirect_uri"], "http://127.0.0.1:5/callback");
        let url = authorization_url(
            &discovery(None, &[]),
            "cid",
            "chal",
            "st",
            &[],
            "http://127.0.0.1:5/callback",
        )
        .unwrap();
        assert!(!url.query_pairs().any(|(k, _)| k == "scope"));
    }

    #[test]
    fn callback_state_and_issuer_rules() {
        let f = flow();
        let p = |q: &str| CallbackParams::from_query(q);
        assert_eq!(
            validate_callback(&f, false, &p("code=c&state=the-state"))
                .unwrap()
                .expose(),
            "c"
        );
        assert_eq!(
            validate_callback(&f, false, &p("code=c&state=other")),
            Err(CallbackError::StateMismatch)
        );
        assert_eq!(
            validate_callback(&f, false, &p("code=c")),
            Err(CallbackError::StateMismatch)
        );
        // advertised + present: compare
        assert!(
            validate_callback(
                &f,
                true,
                &p("code=c&state=the-state&iss=https%3A%2F%2Fas.example.com")
            )
            .is_ok()
        );
        assert!(matches!(
            validate_callback(
                &f,
                true,
                &p("code=c&state=the-state&iss=https%3A%2F%2Fevil.example")
            ),
            Err(CallbackError::IssuerMismatch { .. })
        ));
        // no normalisation: a trailing slash is a different issuer
        assert!(matches!(
            validate_callback(
                &f,
                true,
                &p("code=c&state=the-state&iss=https%3A%2F%2Fas.example.com%2F")
            ),
            Err(CallbackError::IssuerMismatch { .. })
        ));
        // advertised + absent: reject
        assert_eq!(
            validate_callback(&f, true, &p("code=c&state=the-state")),
            Err(CallbackError::IssuerMissing)
        );
        // not advertised + present: compare
        assert!(matches!(
            validate_callback(&f, false, &p("code=c&state=the-state&iss=x")),
            Err(CallbackError::IssuerMismatch { .. })
        ));
    }

    #[test]
    fn errors_are_reported_only_after_state_and_issuer_pass() {
        let f = flow();
        let p = |q: &str| CallbackParams::from_query(q);
        assert_eq!(
            validate_callback(&f, false, &p("error=access_denied&state=bad")),
            Err(CallbackError::StateMismatch)
        );
        assert!(matches!(
            validate_callback(&f, true, &p("error=access_denied&state=the-state&iss=evil")),
            Err(CallbackError::IssuerMismatch { .. })
        ));
        assert_eq!(
            validate_callback(
                &f,
                false,
                &p("error=access_denied&error_description=no%20thanks&state=the-state")
            ),
            Err(CallbackError::Denied {
                error: "access_denied".into(),
                description: Some("no thanks".into())
            })
        );
        assert_eq!(
            validate_callback(&f, false, &p("state=the-state")),
            Err(CallbackError::MissingCode)
        );
    }
}
