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
use crate::next_step::NextStep;
use crate::state::{AuthServerMetadata, SettingsInForce};

/// One step of the walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoctorStep {
    /// What was looked at (`challenge`, `resource metadata`, ...).
    pub step: &'static str,
    /// What was found, for a person.
    pub found: String,
    pub ok: bool,
    /// For a problem: the one setting that fixes it, in words.
    pub fix: Option<String>,
    /// For a problem a command fixes: the command, for the client to word.
    pub next: Option<NextStep>,
}

/// The steps so far, for the server `name`.
#[derive(Default)]
struct Report {
    name: String,
    steps: Vec<DoctorStep>,
}

impl Report {
    fn ok(&mut self, step: &'static str, found: impl Into<String>) {
        self.steps.push(DoctorStep {
            step,
            found: found.into(),
            ok: true,
            fix: None,
            next: None,
        });
    }
    fn problem(&mut self, step: &'static str, found: impl Into<String>, fix: impl Into<String>) {
        self.steps.push(DoctorStep {
            step,
            found: found.into(),
            ok: false,
            fix: Some(fix.into()),
            next: None,
        });
    }
    /// A problem with the command that fixes it.
    fn problem_then(
        &mut self,
        step: &'static str,
        found: impl Into<String>,
        fix: impl Into<String>,
        next: NextStep,
    ) {
        self.problem(step, found, fix);
        if let Some(last) = self.steps.last_mut() {
            last.next = Some(next);
        }
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

/// A problem that ends the walk; it is already in the report.
struct Stop;

/// A step's result: what the next steps need, or `Err(Stop)`.
type Step<T> = Result<T, Stop>;

/// Where the authorization server was found.
struct AuthServer {
    /// The issuer the resource metadata named (`None` for a 2025-03-26
    /// server without resource metadata).
    issuer_hint: Option<String>,
    /// Where its metadata is looked for.
    url: Url,
    /// A 2025-03-26 server: its authorization server is at its origin.
    legacy: bool,
}

impl HttpClient {
    /// Walks discovery and registration for `server` (named `name`).
    pub async fn diagnose(&self, name: &str, server: &ServerConfig) -> Vec<DoctorStep> {
        let mut r = Report {
            name: name.to_string(),
            ..Default::default()
        };
        // A `Stop` has put its problem in the report already.
        let _: Step<()> = self.walk(name, server, &mut r).await;
        r.steps
    }

    async fn walk(&self, name: &str, config: &ServerConfig, r: &mut Report) -> Step<()> {
        let server = &config.url;
        let settings = &config.settings;
        r.ok(
            "server",
            format!("{} (grant {})", display_url(server), config.grant.as_str()),
        );
        let (status, challenge) = self.probe_step(server, r).await?;
        let prm = self.resource_metadata_step(server, &challenge, r).await?;
        let auth_server = authorization_server_step(server, prm, r)?;
        let candidates = metadata_candidates_step(server, settings, &auth_server.url, r)?;
        let Some((m, metadata_url)) = self.metadata_step(server, candidates, r).await? else {
            no_metadata(&auth_server, status, r);
            return Err(Stop);
        };
        let issuer = issuer_step(&m, &metadata_url, &auth_server, settings, r)?;
        let in_force = settings.in_force(&issuer);
        endpoints_step(&m, r);
        registration_step(name, config, &m, r);
        pkce_step(config, &m, &in_force, r);
        iss_step(&m, &in_force, r);
        grant_types_step(&m, r);
        settings_step(settings, &issuer, &in_force, r);
        Ok(())
    }

    /// The challenge: what the server answers without a token.
    async fn probe_step(
        &self,
        server: &Url,
        r: &mut Report,
    ) -> Step<(u16, Option<BearerChallenge>)> {
        let (status, challenge) = match self.probe(server).await {
            Ok(p) => p,
            Err(e) => {
                r.problem(
                    "challenge",
                    e.to_string(),
                    "check the server's url in config.toml, and that it is up",
                );
                return Err(Stop);
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
        Ok((status, challenge))
    }

    /// Protected resource metadata: the challenge's URL, then the
    /// well-known locations, until one is found.
    async fn resource_metadata_step(
        &self,
        server: &Url,
        challenge: &Option<BearerChallenge>,
        r: &mut Report,
    ) -> Step<Option<(Url, ProtectedResourceMetadata)>> {
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
                    return Ok(Some((url.clone(), doc)));
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
                    return Err(Stop);
                }
            }
        }
        Ok(None)
    }

    /// AS metadata: the candidates in turn, until one is found.
    async fn metadata_step(
        &self,
        server: &Url,
        candidates: Vec<Url>,
        r: &mut Report,
    ) -> Step<Option<(AuthServerMetadata, Url)>> {
        for url in candidates {
            let result = self.get_json_from::<AuthServerMetadata>(&url, server).await;
            let said = answered(&result);
            match result {
                Ok(Fetched::Found((doc, _))) => {
                    r.ok("metadata", format!("GET {} → {said}", display_url(&url)));
                    return Ok(Some((doc, url)));
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
                    return Err(Stop);
                }
            }
        }
        Ok(None)
    }
}

/// The resource and authorization server the resource metadata names,
/// or (without it) the server's origin.
fn authorization_server_step(
    server: &Url,
    prm: Option<(Url, ProtectedResourceMetadata)>,
    r: &mut Report,
) -> Step<AuthServer> {
    let Some((prm_url, doc)) = prm else {
        return origin_as_authorization_server(server, r);
    };
    resource_step(server, &prm_url, &doc, r)?;
    let Some(issuer) = doc.authorization_servers.first().cloned() else {
        r.problem(
            "authorization server",
            "the resource metadata lists none",
            "the server's metadata is incomplete; ask its operator",
        );
        return Err(Stop);
    };
    match checked_for("authorization server", &issuer, server) {
        Ok(url) => {
            r.ok("authorization server", issuer.clone());
            Ok(AuthServer {
                issuer_hint: Some(issuer),
                url,
                legacy: false,
            })
        }
        Err(e) => {
            r.problem(
                "authorization server",
                e.to_string(),
                "mcpauth will not use it; ask the server's operator",
            );
            Err(Stop)
        }
    }
}

/// The resource metadata's `resource`: it must be this server.
fn resource_step(
    server: &Url,
    prm_url: &Url,
    doc: &ProtectedResourceMetadata,
    r: &mut Report,
) -> Step<()> {
    let Some(resource) = doc.resource.as_deref() else {
        r.problem(
            "resource",
            format!("{} names no \"resource\"", display_url(prm_url)),
            "the server's metadata is incomplete; ask its operator",
        );
        return Err(Stop);
    };
    match Url::parse(resource)
        .ok()
        .filter(|u| resource_identifies(u, server))
    {
        Some(u) => {
            r.ok(
                "resource",
                format!(
                    "{} (sent as resource: {})",
                    resource,
                    canonical_resource(&u)
                ),
            );
            Ok(())
        }
        None => {
            r.problem(
                "resource",
                format!("{resource:?} is not this server ({})", canonical_resource(server)),
                "the metadata is about another server: check the url in config.toml (nothing is sent to a server that says it is another)",
            );
            Err(Stop)
        }
    }
}

/// Without resource metadata: a 2025-03-26 server, whose authorization
/// server is at its origin.
fn origin_as_authorization_server(server: &Url, r: &mut Report) -> Step<AuthServer> {
    let origin = server.origin().ascii_serialization();
    r.ok(
        "authorization server",
        format!("no resource metadata: a 2025-03-26 server, whose authorization server is at its origin {origin}"),
    );
    match checked("authorization server", &origin) {
        Ok(url) => Ok(AuthServer {
            issuer_hint: None,
            url,
            legacy: true,
        }),
        Err(e) => {
            r.problem(
                "authorization server",
                e.to_string(),
                "check the server's url in config.toml",
            );
            Err(Stop)
        }
    }
}

/// Where AS metadata is looked for: `auth_server_metadata_url` alone, or
/// the well-known locations for the issuer.
fn metadata_candidates_step(
    server: &Url,
    settings: &ServerSettings,
    issuer_url: &Url,
    r: &mut Report,
) -> Step<Vec<Url>> {
    let Some(url) = &settings.auth_server_metadata_url else {
        return Ok(metadata_candidates(issuer_url));
    };
    match checked_for("auth_server_metadata_url", url.as_str(), server) {
        Ok(url) => {
            r.ok("metadata", format!("auth_server_metadata_url = \"{url}\" (config.toml): that document alone, bound to the issuer it names"));
            Ok(vec![url])
        }
        Err(e) => {
            r.problem(
                "metadata",
                e.to_string(),
                "set auth_server_metadata_url to an https URL that is not on this machine",
            );
            Err(Stop)
        }
    }
}

/// No AS metadata anywhere: fine only for a 2025-03-26 server that asked
/// for a token (its default endpoints are used).
fn no_metadata(auth_server: &AuthServer, status: u16, r: &mut Report) {
    if auth_server.legacy && matches!(status, 401 | 403) {
        r.ok(
            "metadata",
            "none: the default /authorize, /token and /register at the server's origin are used",
        );
    } else if auth_server.legacy {
        let server = r.name.clone();
        r.problem_then(
            "metadata",
            "none, and the server asked for no token",
            "nothing to log in to: the server needs no login (or asks only at tools/call: then log in with the challenge it answers there)",
            NextStep::LoginWithChallenge { server },
        );
    } else {
        r.problem(
            "metadata",
            "no authorization server metadata at any of the URLs above",
            format!("{TRUST}, set auth_server_metadata_url = \"https://…\" for it in config.toml, with the URL of its metadata document"),
        );
    }
}

/// The issuer the metadata names, held to the one it was found for.
fn issuer_step(
    m: &AuthServerMetadata,
    metadata_url: &Url,
    auth_server: &AuthServer,
    settings: &ServerSettings,
    r: &mut Report,
) -> Step<String> {
    if m.issuer.is_empty() {
        r.ok(
            "issuer",
            "the document names none (taken from its URL only at the MCP server's own origin)",
        );
        return Ok(auth_server
            .issuer_hint
            .clone()
            .unwrap_or_else(|| auth_server.url.origin().ascii_serialization()));
    }
    match (&auth_server.issuer_hint, &settings.auth_server_metadata_url) {
        (Some(expected), None) if !same_issuer(expected, &m.issuer) => {
            r.problem(
                "issuer",
                format!(
                    "the metadata says {:?}, but it was found for {expected:?}",
                    m.issuer
                ),
                format!(
                    "{TRUST}, set auth_server_metadata_url = \"{}\" for it in config.toml",
                    display_url(metadata_url)
                ),
            );
            return Err(Stop);
        }
        (Some(expected), None) if expected != &m.issuer => r.ok(
            "issuer",
            format!(
                "{} (the resource metadata wrote {expected:?}: the same issuer, but for the '/')",
                m.issuer
            ),
        ),
        _ => r.ok("issuer", m.issuer.clone()),
    }
    Ok(m.issuer.clone())
}

/// The endpoints the metadata names.
fn endpoints_step(m: &AuthServerMetadata, r: &mut Report) {
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
}

/// How mcpauthd gets a client: configured, CIMD or DCR.
fn registration_step(name: &str, config: &ServerConfig, m: &AuthServerMetadata, r: &mut Report) {
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
        r.problem_then(
            "registration",
            "the authorization server offers no registration (no registration_endpoint, no Client ID Metadata Documents for this server)",
            "register a client with the server's operator and set client_id in config.toml",
            NextStep::SetClientId {
                server: Some(name.to_string()),
            },
        );
    }
}

/// PKCE with S256, needed for a browser login.
fn pkce_step(
    config: &ServerConfig,
    m: &AuthServerMetadata,
    in_force: &SettingsInForce,
    r: &mut Report,
) {
    let browser = config.grant.has_login();
    match &m.code_challenge_methods_supported {
        Some(methods) if methods.iter().any(|x| x == "S256") => {
            r.ok("pkce", format!("S256 listed ({})", methods.join(" ")))
        }
        Some(methods) if browser => {
            let server = r.name.clone();
            r.problem_then(
                "pkce",
                format!("no S256 among {:?}", methods),
                "none: mcpauth needs PKCE with S256 for a browser login; log in with a device code if the server offers it",
                NextStep::LoginWithDevice { server },
            )
        }
        None if browser && !pkce_s256_ok(m, in_force) => r.problem(
            "pkce",
            "no code_challenge_methods_supported",
            format!(
                "{TRUST}, set assume_pkce_s256 = true for it in config.toml (S256 is still used)"
            ),
        ),
        None if browser => r.ok("pkce", "not listed; S256 assumed (assume_pkce_s256)"),
        _ => r.ok("pkce", "not needed by this grant"),
    }
}

/// RFC 9207 `iss` on redirects.
fn iss_step(m: &AuthServerMetadata, in_force: &SettingsInForce, r: &mut Report) {
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
}

/// The grant types the metadata lists.
fn grant_types_step(m: &AuthServerMetadata, r: &mut Report) {
    r.ok(
        "grant types",
        match &m.grant_types_supported {
            Some(types) => types.join(" "),
            None => "not listed (the spec's default: authorization_code implicit)".into(),
        },
    );
}

/// The settings in force for `issuer`, each with where it comes from.
fn settings_step(
    settings: &ServerSettings,
    issuer: &str,
    in_force: &SettingsInForce,
    r: &mut Report,
) {
    let source = |name: &str, configured: bool| {
        if configured {
            "config.toml"
        } else if in_force.from_builtin.iter().any(|b| b == name) {
            "built-in default for this issuer"
        } else {
            "the spec"
        }
    };
    let builtin = builtin_defaults(issuer);
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
