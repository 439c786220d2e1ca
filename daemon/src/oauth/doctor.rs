//! `mcpauthctl doctor`: discovery and registration walked step by step,
//! without logging in, registering or storing anything. Each step says
//! what was asked and what answered; each problem names the one setting
//! or command that fixes it.
//!
//! It follows `discovery` (probe, PRM candidates, AS metadata candidates
//! or `auth_server_metadata_url`, the issuer rule, PKCE) and
//! `registration` (configured client, CIMD, DCR), reporting instead of
//! stopping wherever it can.

use url::Url;

use super::challenge::BearerChallenge;
use super::discovery::{
    ProtectedResourceMetadata, metadata_candidates, pkce_s256_ok, resource_identifies,
    resource_metadata_candidates, same_issuer,
};
use super::http::{Fetched, HttpClient, checked, checked_for, display_url};
use super::{OAuthError, canonical_resource};
use crate::config::{GrantKind, ServerConfig, ServerSettings, builtin_defaults};
use crate::state::AuthServerMetadata;

/// One step of the walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoctorStep {
    /// What was looked at (`challenge`, `resource metadata`, ...).
    pub step: &'static str,
    /// What was found, for a person.
    pub found: String,
    pub ok: bool,
    /// For a problem: the one setting or command that fixes it.
    pub fix: Option<String>,
}

/// The steps so far.
#[derive(Default)]
struct Report {
    steps: Vec<DoctorStep>,
}

impl Report {
    fn ok(&mut self, step: &'static str, found: impl Into<String>) {
        self.steps.push(DoctorStep {
            step,
            found: found.into(),
            ok: true,
            fix: None,
        });
    }
    fn problem(&mut self, step: &'static str, found: impl Into<String>, fix: impl Into<String>) {
        self.steps.push(DoctorStep {
            step,
            found: found.into(),
            ok: false,
            fix: Some(fix.into()),
        });
    }
}

const TRUST: &str = "only if you trust this server";

fn answered<T>(result: &Result<Fetched<T>, OAuthError>) -> String {
    match result {
        Ok(Fetched::Found(_)) => "found".into(),
        Ok(Fetched::Missing(status)) => format!("HTTP {status}, not there"),
        Err(e) => e.to_string(),
    }
}

fn challenge_text(status: u16, challenge: &Option<BearerChallenge>) -> String {
    let status = match status {
        0 => "no usable answer".to_string(),
        s => format!("HTTP {s}"),
    };
    match challenge {
        None => format!("{status}, no Bearer challenge"),
        Some(c) => {
            let mut parts = Vec::new();
            if let Some(r) = &c.resource_metadata {
                parts.push(format!("resource_metadata={r}"));
            }
            if let Some(s) = &c.scope {
                parts.push(format!("scope=\"{s}\""));
            }
            if let Some(e) = &c.error {
                parts.push(format!("error={e}"));
            }
            format!("{status}, Bearer {}", parts.join(", "))
        }
    }
}

impl HttpClient {
    /// Walks discovery and registration for `server` (named `name`).
    pub async fn diagnose(&self, name: &str, server: &ServerConfig) -> Vec<DoctorStep> {
        let mut r = Report::default();
        self.walk(name, server, &mut r).await;
        r.steps
    }

    async fn walk(&self, name: &str, config: &ServerConfig, r: &mut Report) {
        let server = &config.url;
        let settings = &config.settings;
        r.ok(
            "server",
            format!("{} (grant {})", display_url(server), config.grant.as_str()),
        );
        let (status, challenge) = match self.probe(server).await {
            Ok(p) => p,
            Err(e) => {
                r.problem(
                    "challenge",
                    e.to_string(),
                    "check the server's url in config.toml, and that it is up",
                );
                return;
            }
        };
        if matches!(status, 200..=299) && challenge.is_none() {
            r.ok(
                "challenge",
                format!("HTTP {status} without a token: it asks for none on this request (some servers ask only at tools/call)"),
            );
        } else {
            r.ok("challenge", challenge_text(status, &challenge));
        }

        // Protected resource metadata.
        let mut candidates = Vec::new();
        if let Some(raw) = challenge
            .as_ref()
            .and_then(|c| c.resource_metadata.as_deref())
        {
            match checked_for("resource metadata URL", raw, server) {
                Ok(url) => candidates.push(url),
                Err(e) => r.ok(
                    "resource metadata URL",
                    format!("{e}; passed over for the well-known locations"),
                ),
            }
        }
        for url in resource_metadata_candidates(server) {
            if !candidates.contains(&url) {
                candidates.push(url);
            }
        }
        let mut prm = None;
        for url in &candidates {
            let result = self
                .get_json::<ProtectedResourceMetadata>(url, server)
                .await;
            let said = answered(&result);
            match result {
                Ok(Fetched::Found(doc)) => {
                    r.ok(
                        "resource metadata",
                        format!("GET {} → {said}", display_url(url)),
                    );
                    prm = Some((url.clone(), doc));
                    break;
                }
                Ok(Fetched::Missing(_)) => r.ok(
                    "resource metadata",
                    format!("GET {} → {said}", display_url(url)),
                ),
                Err(_) => {
                    r.problem(
                        "resource metadata",
                        format!("GET {} → {said}", display_url(url)),
                        "the server is failing; try again later, or check its status",
                    );
                    return;
                }
            }
        }

        let (issuer_hint, issuer_url, legacy) = match prm {
            Some((prm_url, doc)) => {
                let Some(resource) = doc.resource.as_deref() else {
                    r.problem(
                        "resource",
                        format!("{} names no \"resource\"", display_url(&prm_url)),
                        "the server's metadata is incomplete; ask its operator",
                    );
                    return;
                };
                match Url::parse(resource)
                    .ok()
                    .filter(|u| resource_identifies(u, server))
                {
                    Some(u) => r.ok(
                        "resource",
                        format!(
                            "{} (sent as resource: {})",
                            resource,
                            canonical_resource(&u)
                        ),
                    ),
                    None => {
                        r.problem(
                            "resource",
                            format!("{resource:?} is not this server ({})", canonical_resource(server)),
                            "the metadata is about another server: check the url in config.toml (nothing is sent to a server that says it is another)",
                        );
                        return;
                    }
                }
                let Some(issuer) = doc.authorization_servers.first().cloned() else {
                    r.problem(
                        "authorization server",
                        "the resource metadata lists none",
                        "the server's metadata is incomplete; ask its operator",
                    );
                    return;
                };
                match checked_for("authorization server", &issuer, server) {
                    Ok(url) => {
                        r.ok("authorization server", issuer.clone());
                        (Some(issuer), url, false)
                    }
                    Err(e) => {
                        r.problem(
                            "authorization server",
                            e.to_string(),
                            "mcpauth will not use it; ask the server's operator",
                        );
                        return;
                    }
                }
            }
            None => {
                let origin = server.origin().ascii_serialization();
                r.ok(
                    "authorization server",
                    format!("no resource metadata: a 2025-03-26 server, whose authorization server is at its origin {origin}"),
                );
                match checked("authorization server", &origin) {
                    Ok(url) => (None, url, true),
                    Err(e) => {
                        r.problem(
                            "authorization server",
                            e.to_string(),
                            "check the server's url in config.toml",
                        );
                        return;
                    }
                }
            }
        };

        // AS metadata.
        let candidates = match &settings.auth_server_metadata_url {
            Some(url) => {
                match checked_for("auth_server_metadata_url", url.as_str(), server) {
                    Ok(url) => {
                        r.ok("metadata", format!("auth_server_metadata_url = \"{url}\" (config.toml): that document alone, bound to the issuer it names"));
                        vec![url]
                    }
                    Err(e) => {
                        r.problem("metadata", e.to_string(), "set auth_server_metadata_url to an https URL that is not on this machine");
                        return;
                    }
                }
            }
            None => metadata_candidates(&issuer_url),
        };
        let mut metadata = None;
        for url in candidates {
            let result = self.get_json_from::<AuthServerMetadata>(&url, server).await;
            let said = answered(&result);
            match result {
                Ok(Fetched::Found((doc, _))) => {
                    r.ok("metadata", format!("GET {} → {said}", display_url(&url)));
                    metadata = Some((doc, url));
                    break;
                }
                Ok(Fetched::Missing(_)) => {
                    r.ok("metadata", format!("GET {} → {said}", display_url(&url)))
                }
                Err(_) => {
                    r.problem(
                        "metadata",
                        format!("GET {} → {said}", display_url(&url)),
                        "the authorization server is failing; try again later",
                    );
                    return;
                }
            }
        }
        let Some((m, metadata_url)) = metadata else {
            if legacy && matches!(status, 401 | 403) {
                r.ok("metadata", "none: the default /authorize, /token and /register at the server's origin are used");
            } else if legacy {
                r.problem("metadata", "none, and the server asked for no token", "nothing to log in to: the server needs no login (or asks only at tools/call: run mcpauthctl login NAME --www-authenticate HEADER with its challenge)");
            } else {
                r.problem(
                    "metadata",
                    "no authorization server metadata at any of the URLs above",
                    format!("{TRUST}, set auth_server_metadata_url = \"https://…\" for it in config.toml, with the URL of its metadata document"),
                );
            }
            return;
        };

        // The issuer.
        let issuer = if m.issuer.is_empty() {
            r.ok(
                "issuer",
                "the document names none (taken from its URL only at the MCP server's own origin)",
            );
            issuer_hint
                .clone()
                .unwrap_or_else(|| issuer_url.origin().ascii_serialization())
        } else {
            match (&issuer_hint, &settings.auth_server_metadata_url) {
                (Some(expected), None) if !same_issuer(expected, &m.issuer) => {
                    r.problem(
                        "issuer",
                        format!("the metadata says {:?}, but it was found for {expected:?}", m.issuer),
                        format!("{TRUST}, set auth_server_metadata_url = \"{}\" for it in config.toml", display_url(&metadata_url)),
                    );
                    return;
                }
                (Some(expected), None) if expected != &m.issuer => r.ok(
                    "issuer",
                    format!("{} (the resource metadata wrote {expected:?}: the same issuer, but for the '/')", m.issuer),
                ),
                _ => r.ok("issuer", m.issuer.clone()),
            }
            m.issuer.clone()
        };
        let in_force = settings.in_force(&issuer);

        // Endpoints.
        let mut endpoints = vec![
            format!("authorization {}", m.authorization_endpoint),
            format!("token {}", m.token_endpoint),
        ];
        for (what, url) in [
            ("registration", &m.registration_endpoint),
            ("revocation", &m.revocation_endpoint),
            ("device authorization", &m.device_authorization_endpoint),
        ] {
            if let Some(url) = url {
                endpoints.push(format!("{what} {url}"));
            }
        }
        r.ok("endpoints", endpoints.join(", "));

        // Registration.
        if config.client_id.is_some() {
            r.ok("registration", "the client_id configured in config.toml");
        } else if config.client_metadata_url.is_some() && m.client_id_metadata_document_supported {
            r.ok(
                "registration",
                "a Client ID Metadata Document (client_metadata_url)",
            );
        } else if m.registration_endpoint.is_some() {
            r.ok(
                "registration",
                "dynamic (RFC 7591): mcpauthd registers at the first login",
            );
        } else if config.grant == GrantKind::AuthorizationCode {
            r.problem(
                "registration",
                "the authorization server offers no registration (no registration_endpoint, no Client ID Metadata Documents for this server)",
                format!("register a client with the server's operator and set client_id: mcpauthctl add {name} URL --client-id ID (or client_id in config.toml)"),
            );
        }

        // PKCE.
        let browser = config.grant.has_login();
        match &m.code_challenge_methods_supported {
            Some(methods) if methods.iter().any(|x| x == "S256") => {
                r.ok("pkce", format!("S256 listed ({})", methods.join(" ")))
            }
            Some(methods) if browser => r.problem(
                "pkce",
                format!("no S256 among {:?}", methods),
                "none: mcpauth needs PKCE with S256 for a browser login; log in with a device code (mcpauthctl login NAME --device) if the server offers it",
            ),
            None if browser && !pkce_s256_ok(&m, &in_force) => r.problem(
                "pkce",
                "no code_challenge_methods_supported",
                format!("{TRUST}, set assume_pkce_s256 = true for it in config.toml (S256 is still used)"),
            ),
            None if browser => r.ok("pkce", "not listed; S256 assumed (assume_pkce_s256)"),
            _ => r.ok("pkce", "not needed by this grant"),
        }

        // RFC 9207 `iss`.
        r.ok(
            "iss",
            match (
                m.authorization_response_iss_parameter_supported,
                in_force.allow_missing_iss,
            ) {
                (true, false) => "promised on redirects: required and compared",
                (true, true) => "promised; a redirect without it is accepted (allow_missing_iss), one with it is compared",
                (false, _) => "not promised: compared when a redirect carries it",
            },
        );

        // Grant types.
        r.ok(
            "grant types",
            match &m.grant_types_supported {
                Some(types) => types.join(" "),
                None => "not listed (the spec's default: authorization_code implicit)".into(),
            },
        );

        // Settings.
        let source = |name: &str, configured: bool| {
            if configured {
                "config.toml"
            } else if in_force.from_builtin.iter().any(|b| b == name) {
                "built-in default for this issuer"
            } else {
                "the spec"
            }
        };
        let builtin = builtin_defaults(&issuer);
        let ServerSettings {
            assume_pkce_s256,
            send_resource,
            auth_server_metadata_url,
            authorization_params,
            allow_missing_iss,
        } = settings;
        let params = if in_force.authorization_params.is_empty() {
            "none".to_string()
        } else {
            in_force
                .authorization_params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        r.ok(
            "settings",
            format!(
                "assume_pkce_s256 = {} ({}); send_resource = {} ({}); allow_missing_iss = {} ({}); authorization_params: {params} ({}); auth_server_metadata_url: {}{}",
                in_force.assume_pkce_s256,
                source("assume_pkce_s256", assume_pkce_s256.is_some()),
                in_force.send_resource,
                source("send_resource", send_resource.is_some()),
                in_force.allow_missing_iss,
                source("allow_missing_iss", allow_missing_iss.is_some()),
                source("authorization_params", authorization_params.is_some()),
                auth_server_metadata_url
                    .as_ref()
                    .map_or("none".to_string(), |u| u.to_string()),
                if builtin == ServerSettings::default() {
                    String::new()
                } else {
                    "; this issuer has built-in defaults".into()
                }
            ),
        );
    }
}
