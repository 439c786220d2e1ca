//! Finding a server's authorization server.
//!
//! 1. Probe: an unauthenticated MCP request that a 2026-07-28 stateless
//!    server answers with its real challenge: a `tools/list` POST with the
//!    `MCP-Protocol-Version` and `Mcp-Method` headers (a list has no
//!    `Mcp-Name`) and the protocol version and capabilities in
//!    `params._meta`. A server that refuses it without a challenge (an
//!    older one wanting `initialize` first) is probed again with an
//!    `initialize` POST. A 401/403 carries a `WWW-Authenticate` challenge
//!    with `resource_metadata` and `scope`.
//! 2. Protected Resource Metadata (RFC 9728): the challenge's URL, else
//!    `/.well-known/oauth-protected-resource/<path>`, else at the root. Its
//!    `resource` must identify this server, or nothing more is requested.
//! 3. AS metadata for the first `authorization_servers` entry: for an issuer
//!    with a path, RFC 8414 path-inserted, OIDC path-inserted, OIDC
//!    path-appended; without a path, RFC 8414 then OIDC. The document's
//!    `issuer` must equal the issuer exactly, and PKCE S256 must be listed.
//!    One tolerance, safe because no other issuer can be meant: a PRM
//!    entry and an issuer that differ only by a trailing `/` on an empty
//!    path (`https://accounts.google.com/` and `https://accounts.google.com`)
//!    name the same issuer, and the metadata's own spelling is kept.
//!    With `auth_server_metadata_url` set (a server the person trusts),
//!    that one document is used and its issuer is the one bound to.
//! 4. No PRM at all (2025-03-26): AS metadata at the server's origin, else
//!    the default `/authorize`, `/token`, `/register` there. No issuer was
//!    learned beforehand in that mode, so the metadata's own `issuer` is
//!    accepted (it still passes the URL policy and the no-pivot check).
//!
//! A challenge that cannot be used (its `resource_metadata` is not a
//! URL, or one the URL policy refuses) is passed over for the well-known
//! locations, never a failure.
//!
//! PKCE S256 is required of an AS used for a browser login (listed, or
//! `assume_pkce_s256` when the AS lists no methods at all); the grants
//! without a person (client credentials, JWT bearer) do not use PKCE, and
//! their discovery does not ask for it.
//!
//! A candidate answering 4xx is skipped; anything else that fails (network,
//! 5xx, a malformed document) stops discovery: falling back to a weaker
//! mode because a request failed would let a network fault change policy.

use serde::Deserialize;
use url::Url;

use super::challenge::{self, BearerChallenge};
use super::http::{Fetched, HttpClient, checked, checked_for, display_url};
use super::{OAuthError, canonical_resource};
use crate::config::ServerSettings;
use crate::state::{AuthServerMetadata, Discovery, DiscoverySource, SettingsInForce};

/// The MCP revision announced by the `initialize` probe.
pub const MCP_PROTOCOL_VERSION: &str = "2025-11-25";
/// The MCP revision announced by the stateless probe.
pub const MCP_STATELESS_VERSION: &str = "2026-07-28";
/// The method of the stateless probe: one every server answers, and one
/// that needs the scope a person's tools need.
pub const PROBE_METHOD: &str = "tools/list";

/// RFC 9728 protected resource metadata, as far as we use it.
#[derive(Debug, Deserialize)]
pub struct ProtectedResourceMetadata {
    pub resource: Option<String>,
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    #[serde(default)]
    pub scopes_supported: Option<Vec<String>>,
}

/// The outcome: what to persist, and the challenge seen by the probe.
#[derive(Clone, Debug)]
pub struct Discovered {
    pub discovery: Discovery,
    pub challenge: Option<BearerChallenge>,
}

fn well_known(origin: &Url, prefix: &str, path: &str) -> Url {
    let mut url = origin.clone();
    let path = path.trim_end_matches('/');
    url.set_path(&format!("{prefix}{path}"));
    url.set_query(None);
    url.set_fragment(None);
    url
}

/// The PRM URLs to try, in order.
pub fn resource_metadata_candidates(server: &Url) -> Vec<Url> {
    let path = server.path();
    let mut out = Vec::new();
    if path != "/" && !path.is_empty() {
        out.push(well_known(
            server,
            "/.well-known/oauth-protected-resource",
            path,
        ));
    }
    out.push(well_known(
        server,
        "/.well-known/oauth-protected-resource",
        "",
    ));
    out
}

/// The AS metadata URLs to try for `issuer`, in the spec's order.
pub fn metadata_candidates(issuer: &Url) -> Vec<Url> {
    let path = issuer.path().trim_end_matches('/');
    if path.is_empty() {
        vec![
            well_known(issuer, "/.well-known/oauth-authorization-server", ""),
            well_known(issuer, "/.well-known/openid-configuration", ""),
        ]
    } else {
        let mut appended = issuer.clone();
        appended.set_path(&format!("{path}/.well-known/openid-configuration"));
        appended.set_query(None);
        vec![
            well_known(issuer, "/.well-known/oauth-authorization-server", path),
            well_known(issuer, "/.well-known/openid-configuration", path),
            appended,
        ]
    }
}

/// Whether a PRM `resource` identifies the server at `server`: same origin,
/// and the resource's path is the server's path or one of its parents (on
/// a segment boundary). `https://mcp.example.com` identifies
/// `https://mcp.example.com/mcp`; `https://mcp.example.com/other` does not.
pub fn resource_identifies(resource: &Url, server: &Url) -> bool {
    if resource.scheme() != server.scheme()
        || resource.host_str() != server.host_str()
        || resource.port_or_known_default() != server.port_or_known_default()
    {
        return false;
    }
    let r = resource.path().trim_end_matches('/');
    let s = server.path().trim_end_matches('/');
    r.is_empty() || s == r || s.starts_with(&format!("{r}/"))
}

fn origin_of(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// Whether the issuer a metadata document names is the issuer it was
/// fetched for: identical, or differing only by the trailing `/` of an
/// empty path (`https://accounts.google.com/` names
/// `https://accounts.google.com`). Nothing else is normalised.
pub fn same_issuer(expected: &str, found: &str) -> bool {
    if expected == found {
        return true;
    }
    let (longer, shorter) = if expected.len() > found.len() {
        (expected, found)
    } else {
        (found, expected)
    };
    longer.strip_suffix('/') == Some(shorter)
        && Url::parse(longer).is_ok_and(|u| u.path() == "/" && u.query().is_none())
        && !shorter.ends_with('/')
        && Url::parse(shorter)
            .is_ok_and(|u| u.path() == "/" && !shorter[u.scheme().len() + 3..].contains('/'))
}

/// Whether a browser login may use PKCE S256 with this AS: it lists S256,
/// or lists no methods at all and the person said to assume it.
pub fn pkce_s256_ok(metadata: &AuthServerMetadata, settings: &SettingsInForce) -> bool {
    match &metadata.code_challenge_methods_supported {
        Some(methods) => methods.iter().any(|m| m == "S256"),
        None => settings.assume_pkce_s256,
    }
}

/// The refusal of an AS a browser login cannot use PKCE S256 with.
pub fn pkce_refusal(metadata: &AuthServerMetadata) -> OAuthError {
    OAuthError::PkceUnsupported {
        issuer: metadata.issuer.clone(),
        unlisted: metadata.code_challenge_methods_supported.is_none(),
    }
}

impl HttpClient {
    /// Probes the server without a token and returns the status and the
    /// Bearer challenge, if any: first a stateless `tools/list`, then, when
    /// that is refused without a challenge, an `initialize`.
    pub async fn probe(&self, server: &Url) -> Result<(u16, Option<BearerChallenge>), OAuthError> {
        let stateless = serde_json::json!({
            "jsonrpc": "2.0",
            "id": 1,
            "method": PROBE_METHOD,
            "params": {
                "_meta": {
                    "protocolVersion": MCP_STATELESS_VERSION,
                    "capabilities": {},
                    "clientInfo": {"name": "mcpauth", "version": env!("CARGO_PKG_VERSION")}
                }
            }
        });
        let headers = [
            ("MCP-Protocol-Version", MCP_STATELESS_VERSION),
            ("Mcp-Method", PROBE_METHOD),
        ];
        let first = self.probe_with(server, &stateless, &headers).await?;
        if first.1.is_some() || matches!(first.0, 0 | 200..=299 | 401 | 403) {
            return Ok(first);
        }
        let initialize = serde_json::json!({
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": MCP_PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "mcpauth", "version": env!("CARGO_PKG_VERSION")}
            }
        });
        self.probe_with(
            server,
            &initialize,
            &[("MCP-Protocol-Version", MCP_PROTOCOL_VERSION)],
        )
        .await
    }

    async fn probe_with(
        &self,
        server: &Url,
        body: &serde_json::Value,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Option<BearerChallenge>), OAuthError> {
        let response = match self.post_json(server, body, headers).await {
            Ok(r) => r,
            // A redirect or an oversized answer from the MCP endpoint says
            // nothing about authorization: carry on with well-known URLs.
            Err(OAuthError::Redirect { .. } | OAuthError::TooLarge { .. }) => return Ok((0, None)),
            Err(e) => return Err(e),
        };
        let challenge = if matches!(response.status, 401 | 403) {
            challenge::bearer(response.www_authenticate.iter().map(String::as_str))
        } else {
            None
        };
        Ok((response.status, challenge))
    }

    /// Runs discovery for the MCP server at `server`.
    /// `pkce`: whether the AS must offer PKCE S256 (a browser login).
    /// `settings`: the server's, from config.toml.
    pub async fn discover(
        &self,
        server: &Url,
        now_ms: i64,
        pkce: bool,
        settings: &ServerSettings,
    ) -> Result<Discovered, OAuthError> {
        let (status, challenge) = self.probe(server).await?;
        let mut candidates = Vec::new();
        if let Some(url) = challenge
            .as_ref()
            .and_then(|c| c.resource_metadata.as_deref())
        {
            // A challenge that cannot be used is no reason to fail: the
            // well-known locations are on the server's own origin. One
            // the URL policy refuses is not requested either.
            match checked_for("resource metadata URL", url, server) {
                Ok(url) => candidates.push(url),
                Err(e) => {
                    tracing::warn!(server = %display_url(server), error = %e, "the challenge's resource_metadata cannot be used; trying the well-known locations")
                }
            }
        }
        for url in resource_metadata_candidates(server) {
            if !candidates.contains(&url) {
                candidates.push(url);
            }
        }
        let mut prm = None;
        for url in &candidates {
            match self
                .get_json::<ProtectedResourceMetadata>(url, server)
                .await?
            {
                Fetched::Found(doc) => {
                    prm = Some((url.clone(), doc));
                    break;
                }
                Fetched::Missing(_) => continue,
            }
        }

        let Some((prm_url, prm)) = prm else {
            return self
                .discover_legacy(server, status, challenge, now_ms, pkce, settings)
                .await;
        };

        // RFC 9728 §3.3: the document must be about this server.
        let resource = match prm.resource.as_deref() {
            None => {
                return Err(OAuthError::BadDocument {
                    url: display_url(&prm_url),
                    reason: "no \"resource\"".into(),
                });
            }
            Some(r) => r,
        };
        let resource_url = Url::parse(resource)
            .ok()
            .filter(|r| resource_identifies(r, server));
        let Some(resource_url) = resource_url else {
            return Err(OAuthError::ResourceMismatch {
                expected: canonical_resource(server),
                found: resource.chars().take(200).collect(),
            });
        };
        let issuer_raw = prm
            .authorization_servers
            .first()
            .ok_or(OAuthError::NoAuthorizationServer)?
            .clone();
        let issuer_url = checked_for("authorization server", &issuer_raw, server)?;
        let override_url = settings.auth_server_metadata_url.as_ref();
        let metadata = self
            .fetch_metadata(
                override_url.is_none().then_some(issuer_raw.as_str()),
                &issuer_url,
                server,
                pkce,
                settings,
            )
            .await?;
        let metadata = metadata.ok_or_else(|| OAuthError::NoMetadata {
            issuer: issuer_raw.clone(),
        })?;
        // The metadata's own spelling of the issuer: `iss` on callbacks and
        // the grants are bound to it.
        let issuer = metadata.issuer.clone();
        Ok(Discovered {
            discovery: Discovery {
                resource: canonical_resource(&resource_url),
                settings: settings.in_force(&issuer),
                issuer,
                metadata,
                resource_scopes: prm.scopes_supported.unwrap_or_default(),
                source: DiscoverySource::ProtectedResource,
                discovered_at_ms: now_ms,
            },
            challenge,
        })
    }

    /// The metadata of a configured identity provider (`enterprise`): its
    /// issuer was written by the person, so it is held to it exactly,
    /// and PKCE S256 is required (the broker logs in there with a browser).
    pub async fn identity_provider_metadata(
        &self,
        issuer: &str,
    ) -> Result<AuthServerMetadata, OAuthError> {
        let issuer_url = checked("identity provider", issuer)?;
        let metadata = self
            .fetch_metadata(
                Some(issuer),
                &issuer_url,
                &issuer_url,
                true,
                &ServerSettings::default(),
            )
            .await
            .map_err(|e| match e {
                OAuthError::IssuerMismatch { found, .. } => OAuthError::IdpIssuerMismatch {
                    configured: issuer.to_string(),
                    found,
                },
                e => e,
            })?
            .ok_or_else(|| OAuthError::NoMetadata {
                issuer: issuer.to_string(),
            })?;
        // Not even the '/' of an empty path: the issuer in config.toml is
        // the one ID tokens and `iss` are compared with.
        if metadata.issuer != issuer {
            return Err(OAuthError::IdpIssuerMismatch {
                configured: issuer.to_string(),
                found: metadata.issuer.chars().take(200).collect(),
            });
        }
        Ok(metadata)
    }

    /// Fetches and checks AS metadata; `Ok(None)` when no candidate exists.
    /// `issuer`: the issuer the metadata must name exactly, when one was
    /// learned beforehand (from PRM); `None` in the 2025-03-26 fallback,
    /// where the document's own issuer is taken once it passes the URL
    /// policy. With `auth_server_metadata_url` set, that document alone
    /// is fetched, and its own issuer is taken the same way.
    async fn fetch_metadata(
        &self,
        issuer: Option<&str>,
        issuer_url: &Url,
        server: &Url,
        pkce: bool,
        settings: &ServerSettings,
    ) -> Result<Option<AuthServerMetadata>, OAuthError> {
        let candidates = match &settings.auth_server_metadata_url {
            Some(url) => vec![checked_for(
                "auth_server_metadata_url",
                url.as_str(),
                server,
            )?],
            None => metadata_candidates(issuer_url),
        };
        for url in candidates {
            let (mut metadata, at) = match self
                .get_json_from::<AuthServerMetadata>(&url, server)
                .await?
            {
                Fetched::Found(found) => found,
                Fetched::Missing(_) => continue,
            };
            resolve_relative_endpoints(&mut metadata, &at)?;
            if metadata.issuer.is_empty() {
                // Home Assistant serves its metadata at the MCP server's
                // own origin, without an issuer: that origin is the
                // issuer. Anywhere else nothing vouches for one.
                if at.origin() != server.origin() {
                    return Err(OAuthError::BadDocument {
                        url: display_url(&at),
                        reason: "no \"issuer\" (taken as implied only for metadata the MCP server's own origin serves)".into(),
                    });
                }
                metadata.issuer = match issuer {
                    Some(issuer) => issuer.to_string(),
                    None => origin_of(issuer_url),
                };
                metadata.issuer_implied = true;
            }
            match issuer {
                Some(issuer) if !same_issuer(issuer, &metadata.issuer) => {
                    return Err(OAuthError::IssuerMismatch {
                        expected: issuer.to_string(),
                        found: metadata.issuer.chars().take(200).collect(),
                        metadata_url: display_url(&url),
                    });
                }
                Some(_) => {}
                None => {
                    checked_for("authorization server issuer", &metadata.issuer, server)?;
                }
            }
            if pkce && !pkce_s256_ok(&metadata, &settings.in_force(&metadata.issuer)) {
                return Err(pkce_refusal(&metadata));
            }
            check_endpoints(&metadata, server)?;
            return Ok(Some(metadata));
        }
        Ok(None)
    }

    /// 2025-03-26 servers: no PRM; the AS metadata is looked for at the
    /// server's origin, and the issuer it names is the issuer (none was
    /// learned beforehand to hold it to). Without metadata, the origin is
    /// the issuer of the default endpoints.
    async fn discover_legacy(
        &self,
        server: &Url,
        status: u16,
        challenge: Option<BearerChallenge>,
        now_ms: i64,
        pkce: bool,
        settings: &ServerSettings,
    ) -> Result<Discovered, OAuthError> {
        let origin = origin_of(server);
        let origin_url = checked("authorization server", &origin)?;
        let (metadata, source) = match self
            .fetch_metadata(None, &origin_url, server, pkce, settings)
            .await?
        {
            Some(m) => (m, DiscoverySource::LegacyMetadata),
            None => {
                if !matches!(status, 401 | 403) {
                    return Err(OAuthError::NotProtected);
                }
                let at = |path: &str| format!("{origin}{path}");
                (
                    AuthServerMetadata {
                        issuer: origin.clone(),
                        authorization_endpoint: at("/authorize"),
                        token_endpoint: at("/token"),
                        registration_endpoint: Some(at("/register")),
                        code_challenge_methods_supported: Some(vec!["S256".into()]),
                        ..Default::default()
                    },
                    DiscoverySource::LegacyDefaults,
                )
            }
        };
        Ok(Discovered {
            discovery: Discovery {
                resource: canonical_resource(server),
                settings: settings.in_force(&metadata.issuer),
                issuer: metadata.issuer.clone(),
                metadata,
                resource_scopes: Vec::new(),
                source,
                discovered_at_ms: now_ms,
            },
            challenge,
        })
    }
}

/// Endpoints given as relative URLs (`"/auth/token"`, Home Assistant)
/// resolve against the URL the metadata was fetched from, and must stay on
/// its origin: `//other.host/…` is refused, naming the field.
fn resolve_relative_endpoints(m: &mut AuthServerMetadata, at: &Url) -> Result<(), OAuthError> {
    let resolve = |field: &str, raw: &mut String| -> Result<(), OAuthError> {
        if Url::parse(raw) != Err(url::ParseError::RelativeUrlWithoutBase) {
            return Ok(());
        }
        let resolved = at
            .join(raw)
            .ok()
            .filter(|u| u.origin() == at.origin())
            .ok_or_else(|| OAuthError::BadDocument {
                url: display_url(at),
                reason: format!(
                    "{field} {:?} is relative and does not resolve on this document's origin",
                    raw.chars().take(200).collect::<String>()
                ),
            })?;
        *raw = resolved.to_string();
        Ok(())
    };
    resolve("authorization_endpoint", &mut m.authorization_endpoint)?;
    resolve("token_endpoint", &mut m.token_endpoint)?;
    for (field, value) in [
        ("registration_endpoint", &mut m.registration_endpoint),
        ("revocation_endpoint", &mut m.revocation_endpoint),
        (
            "device_authorization_endpoint",
            &mut m.device_authorization_endpoint,
        ),
    ] {
        if let Some(raw) = value {
            resolve(field, raw)?;
        }
    }
    Ok(())
}

/// Every endpoint the metadata names must pass the URL policy for URLs
/// discovered on behalf of `server`.
fn check_endpoints(m: &AuthServerMetadata, server: &Url) -> Result<(), OAuthError> {
    checked_for("authorization endpoint", &m.authorization_endpoint, server)?;
    checked_for("token endpoint", &m.token_endpoint, server)?;
    if let Some(r) = &m.registration_endpoint {
        checked_for("registration endpoint", r, server)?;
    }
    if let Some(r) = &m.revocation_endpoint {
        checked_for("revocation endpoint", r, server)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn prm_candidates_insert_the_path_then_try_the_root() {
        let c = resource_metadata_candidates(&u("https://mcp.example.com/public/mcp"));
        assert_eq!(
            c.iter().map(Url::as_str).collect::<Vec<_>>(),
            [
                "https://mcp.example.com/.well-known/oauth-protected-resource/public/mcp",
                "https://mcp.example.com/.well-known/oauth-protected-resource",
            ]
        );
        let c = resource_metadata_candidates(&u("https://mcp.example.com/"));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn metadata_candidates_follow_the_spec_order() {
        let with_path = metadata_candidates(&u("https://auth.example.com/tenant1"));
        assert_eq!(
            with_path.iter().map(Url::as_str).collect::<Vec<_>>(),
            [
                "https://auth.example.com/.well-known/oauth-authorization-server/tenant1",
                "https://auth.example.com/.well-known/openid-configuration/tenant1",
                "https://auth.example.com/tenant1/.well-known/openid-configuration",
            ]
        );
        let root = metadata_candidates(&u("https://auth.example.com"));
        assert_eq!(
            root.iter().map(Url::as_str).collect::<Vec<_>>(),
            [
                "https://auth.example.com/.well-known/oauth-authorization-server",
                "https://auth.example.com/.well-known/openid-configuration",
            ]
        );
    }

    #[test]
    fn relative_endpoints_resolve_on_the_documents_origin_only() {
        let at = u("https://ha.example.com/.well-known/oauth-authorization-server");
        let mut m = AuthServerMetadata {
            authorization_endpoint: "/auth/authorize".into(),
            token_endpoint: "https://ha.example.com/auth/token".into(),
            revocation_endpoint: Some("auth/revoke".into()),
            ..Default::default()
        };
        resolve_relative_endpoints(&mut m, &at).unwrap();
        assert_eq!(
            m.authorization_endpoint,
            "https://ha.example.com/auth/authorize"
        );
        assert_eq!(m.token_endpoint, "https://ha.example.com/auth/token");
        assert_eq!(
            m.revocation_endpoint.as_deref(),
            Some("https://ha.example.com/.well-known/auth/revoke")
        );
        // An absolute URL elsewhere is the URL policy's to judge, not this.
        let mut m = AuthServerMetadata {
            authorization_endpoint: "https://as.example.com/authorize".into(),
            token_endpoint: "//evil.example.com/token".into(),
            ..Default::default()
        };
        let e = resolve_relative_endpoints(&mut m, &at)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("token_endpoint") && e.contains("evil.example.com"),
            "{e}"
        );
    }

    #[test]
    fn an_issuer_differing_only_by_the_slash_of_an_empty_path_is_the_same() {
        assert!(same_issuer(
            "https://accounts.google.com/",
            "https://accounts.google.com"
        ));
        assert!(same_issuer(
            "https://accounts.google.com",
            "https://accounts.google.com/"
        ));
        assert!(same_issuer(
            "https://a.example:8443/",
            "https://a.example:8443"
        ));
        for (a, b) in [
            ("https://as.example/t1/", "https://as.example/t1"),
            ("https://as.example//", "https://as.example/"),
            ("https://as.example//", "https://as.example"),
            ("https://as.example/", "https://other.example"),
            ("https://as.example/?", "https://as.example"),
            ("https://AS.example/", "https://as.example"),
            ("https://as.example/", "https://as.example/x"),
        ] {
            assert!(!same_issuer(a, b), "{a} {b}");
            assert!(!same_issuer(b, a), "{b} {a}");
        }
    }

    #[test]
    fn pkce_is_assumed_only_when_no_method_is_listed_and_the_setting_says_so() {
        let assume = SettingsInForce {
            assume_pkce_s256: true,
            ..Default::default()
        };
        let spec = SettingsInForce::default();
        let unlisted = AuthServerMetadata::default();
        assert!(!pkce_s256_ok(&unlisted, &spec));
        assert!(pkce_s256_ok(&unlisted, &assume));
        let plain_only = AuthServerMetadata {
            code_challenge_methods_supported: Some(vec!["plain".into()]),
            ..Default::default()
        };
        assert!(!pkce_s256_ok(&plain_only, &assume));
        assert!(
            pkce_refusal(&unlisted)
                .to_string()
                .contains("assume_pkce_s256")
        );
        assert!(
            !pkce_refusal(&plain_only)
                .to_string()
                .contains("assume_pkce_s256")
        );
    }

    #[test]
    fn resource_identification() {
        let server = u("https://mcp.example.com/mcp");
        assert!(resource_identifies(
            &u("https://mcp.example.com/mcp"),
            &server
        ));
        assert!(resource_identifies(
            &u("https://mcp.example.com/mcp/"),
            &server
        ));
        assert!(resource_identifies(&u("https://mcp.example.com"), &server));
        assert!(resource_identifies(
            &u("https://MCP.example.com:443/"),
            &server
        ));
        assert!(!resource_identifies(
            &u("https://mcp.example.com/other"),
            &server
        ));
        assert!(!resource_identifies(
            &u("https://mcp.example.com/mc"),
            &server
        ));
        assert!(!resource_identifies(
            &u("https://evil.example.com/mcp"),
            &server
        ));
        assert!(!resource_identifies(
            &u("http://mcp.example.com/mcp"),
            &server
        ));
        assert!(!resource_identifies(
            &u("https://mcp.example.com:8443/mcp"),
            &server
        ));
    }
}
