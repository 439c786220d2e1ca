//! Hostile input: property tests for everything that parses what other
//! parties send. Arbitrary bytes and strings, and structured inputs built
//! to reach the interesting branches, must never panic, and must keep the
//! security properties each parser promises (no secret in an error, no
//! code without the right state, candidates never leave the origin).
//!
//! CI runs each property for a bounded number of cases (below); run longer
//! locally with e.g. `PROPTEST_CASES=200000 cargo test -p mcpauthd --test
//! hostile_input --release`. Every failure found becomes a case in
//! `regressions` at the bottom.

use std::path::Path;

use mcpauthd::config::{Config, ConfigDocument, NewServer, ServerName, TokenFileFormat};
use mcpauthd::files::parse_file;
use mcpauthd::oauth::challenge;
use mcpauthd::oauth::discovery::{
    ProtectedResourceMetadata, metadata_candidates, resource_identifies,
    resource_metadata_candidates,
};
use mcpauthd::oauth::flow::{CallbackError, CallbackParams, validate_callback};
use mcpauthd::oauth::http::Response;
use mcpauthd::oauth::jwt;
use mcpauthd::oauth::token::parse_token_response;
use mcpauthd::secret::Secret;
use mcpauthd::state::{AuthServerMetadata, PendingFlow};
use proptest::prelude::*;
use url::Url;

/// Cases per property in CI; `PROPTEST_CASES` overrides.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings of the characters parsers care about, and some they should not.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,200}",
        r#"[a-zA-Z0-9=,;"\\ \t/+._~%&?#:-]{0,200}"#,
    ]
}

/// A secret-looking value: long enough that sanitising must redact it.
fn secret_value() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{12,40}".prop_map(|s| format!("S3CR3T{s}"))
}

fn small_url() -> impl Strategy<Value = Url> {
    (
        prop_oneof![Just("https"), Just("http")],
        prop_oneof![
            Just("as.example.com"),
            Just("mcp.example.com"),
            Just("127.0.0.1"),
            Just("[::1]"),
            Just("xn--bcher-kva.example"),
        ],
        proptest::option::of(1u16..),
        proptest::collection::vec("[a-zA-Z0-9._%~-]{0,12}", 0..5),
        proptest::option::of("[a-z=&%0-9]{0,20}"),
    )
        .prop_filter_map("must parse", |(scheme, host, port, segments, query)| {
            let mut s = format!("{scheme}://{host}");
            if let Some(p) = port {
                s.push_str(&format!(":{p}"));
            }
            for seg in segments {
                s.push('/');
                s.push_str(&seg);
            }
            if let Some(q) = query {
                s.push('?');
                s.push_str(&q);
            }
            Url::parse(&s).ok()
        })
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.origin() == b.origin()
}

/// A well-formed challenge and what it must parse to.
fn challenge_value() -> impl Strategy<Value = (String, Vec<(String, String)>)> {
    let param = ("[a-z_]{1,12}", "[ -~]{0,40}");
    (
        prop_oneof![Just("Bearer"), Just("bearer"), Just("DPoP"), Just("Basic")],
        proptest::collection::vec(param, 0..6),
    )
        .prop_map(|(scheme, params)| {
            let rendered: Vec<String> = params
                .iter()
                .map(|(k, v)| {
                    let quoted = v.replace('\\', "\\\\").replace('"', "\\\"");
                    format!("{k}=\"{quoted}\"")
                })
                .collect();
            let value = if rendered.is_empty() {
                scheme.to_string()
            } else {
                format!("{scheme} {}", rendered.join(", "))
            };
            (value, params)
        })
}

fn flow() -> PendingFlow {
    PendingFlow {
        state: Secret::new("the-state-value-0123456789abcdef"),
        verifier: Secret::new("the-verifier-0123456789abcdef0123456789abc"),
        issuer: "https://as.example.com".into(),
        client_id: "client".into(),
        redirect_uri: "http://127.0.0.1:33418/callback".into(),
        scopes: vec![],
        authorization_url: "https://as.example.com/authorize".into(),
        created_at_ms: 0,
        expires_at_ms: i64::MAX,
    }
}

fn query_pair() -> impl Strategy<Value = (String, String)> {
    (
        prop_oneof![
            Just("code".to_string()),
            Just("state".to_string()),
            Just("iss".to_string()),
            Just("error".to_string()),
            Just("error_description".to_string()),
            "[a-z_]{1,10}",
        ],
        prop_oneof![
            Just("the-state-value-0123456789abcdef".to_string()),
            Just("https://as.example.com".to_string()),
            nasty_string(),
        ],
    )
}

fn json_number() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        Just(serde_json::json!(1e300)),
        Just(serde_json::json!(-1e300)),
        "[0-9 .e-]{0,24}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
        Just(serde_json::json!([])),
    ]
}

fn response(status: u16, content_type: &str, body: Vec<u8>) -> Response {
    Response {
        status,
        retry_after_secs: None,
        content_type: content_type.into(),
        www_authenticate: vec![],
        body,
    }
}

proptest! {
    #![proptest_config(config())]

    // --- WWW-Authenticate ---

    #[test]
    fn challenge_parser_survives_anything(values in proptest::collection::vec(nasty_string(), 0..4)) {
        let parsed = challenge::parse(values.iter().map(String::as_str));
        for c in &parsed {
            prop_assert_eq!(c.scheme.to_ascii_lowercase(), c.scheme.clone());
        }
        let _ = challenge::bearer(values.iter().map(String::as_str));
    }

    #[test]
    fn well_formed_challenges_parse_exactly((value, params) in challenge_value()) {
        let parsed = challenge::parse([value.as_str()]);
        prop_assert_eq!(parsed.len(), 1, "{}", value);
        prop_assert_eq!(&parsed[0].params, &params, "{}", value);
    }

    // --- JWTs the broker forwards (workload tokens, ID-JAGs) ---

    #[test]
    fn the_jwt_decoder_survives_anything(text in nasty_string(), now in any::<i64>()) {
        if let Ok(claims) = jwt::decode_unverified(&Secret::new(text)) {
            let _ = jwt::check_forwarded(&claims, &["https://as.example.com"], now);
        }
    }

    #[test]
    fn forwarded_claims_of_any_shape_are_judged_without_panic(
        aud in prop_oneof![
            nasty_string().prop_map(serde_json::Value::from),
            proptest::collection::vec(nasty_string(), 0..4).prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
        ],
        exp in prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            nasty_string().prop_map(serde_json::Value::from),
        ],
        now in any::<i64>(),
        secret in secret_value(),
    ) {
        use base64::Engine;
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let token = format!(
            "{}.{}.{secret}",
            b64(&serde_json::json!({"alg": "ES256"})),
            b64(&serde_json::json!({"aud": aud, "exp": exp, "sub": secret}))
        );
        if let Ok(claims) = jwt::decode_unverified(&Secret::new(token))
            && let Err(e) = jwt::check_forwarded(&claims, &["https://as.example.com"], now)
        {
            // The refusal names the audience, never the token or its
            // subject.
            prop_assert!(!e.to_string().contains(&secret), "{}", e);
        }
    }

    #[test]
    fn long_challenge_values_are_bounded(n in 10_000usize..200_000) {
        let value = format!("Bearer scope=\"{}\"", "a ".repeat(n));
        let parsed = challenge::parse([value.as_str()]);
        let total: usize = parsed.iter().flat_map(|c| &c.params).map(|(_, v)| v.len()).sum();
        prop_assert!(total <= 16 * 1024);
    }

    // --- metadata documents ---

    #[test]
    fn metadata_documents_survive_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = serde_json::from_slice::<AuthServerMetadata>(&bytes);
        let _ = serde_json::from_slice::<ProtectedResourceMetadata>(&bytes);
    }

    #[test]
    fn metadata_documents_survive_any_field_values(
        issuer in nasty_string(),
        endpoint in nasty_string(),
        list in proptest::collection::vec(nasty_string(), 0..4),
        number in json_number(),
    ) {
        for doc in [
            serde_json::json!({"issuer": issuer, "authorization_endpoint": endpoint,
                "token_endpoint": endpoint, "scopes_supported": list,
                "code_challenge_methods_supported": number}),
            serde_json::json!({"issuer": number, "token_endpoint": list}),
            serde_json::json!({"resource": issuer, "authorization_servers": list,
                "scopes_supported": number}),
        ] {
            let _ = serde_json::from_value::<AuthServerMetadata>(doc.clone());
            let _ = serde_json::from_value::<ProtectedResourceMetadata>(doc);
        }
    }

    #[test]
    fn discovery_never_leaves_the_origin(server in small_url(), issuer in small_url(), other in small_url()) {
        for candidate in resource_metadata_candidates(&server) {
            prop_assert!(same_origin(&candidate, &server), "{} for {}", candidate, server);
        }
        for candidate in metadata_candidates(&issuer) {
            prop_assert!(same_origin(&candidate, &issuer), "{} for {}", candidate, issuer);
        }
        if resource_identifies(&other, &server) {
            prop_assert!(same_origin(&other, &server), "{} identifies {}", other, server);
        }
        prop_assert!(resource_identifies(&server, &server) || server.query().is_some(), "{}", server);
    }

    // --- token responses ---

    #[test]
    fn token_responses_survive_any_bytes(
        status in prop_oneof![Just(200u16), Just(400), Just(401), Just(500), 100u16..600],
        content_type in prop_oneof![
            Just("application/json".to_string()),
            Just("text/html".to_string()),
            Just(String::new()),
            "[ -~]{0,30}",
        ],
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let url = Url::parse("https://as.example.com/token").unwrap();
        let _ = parse_token_response(&url, &response(status, &content_type, body), &[]);
    }

    #[test]
    fn token_errors_never_echo_what_was_sent(
        secret in secret_value(),
        prefix in "[ -~]{0,20}",
        status in 400u16..600,
    ) {
        let url = Url::parse("https://as.example.com/token").unwrap();
        let body = serde_json::json!({
            "error": format!("{prefix}{secret}"),
            "error_description": format!("bad refresh_token {secret}, {prefix}"),
        });
        let err = parse_token_response(
            &url,
            &response(status, "application/json", body.to_string().into_bytes()),
            &[&secret],
        )
        .unwrap_err();
        prop_assert!(!err.to_string().contains(&secret), "{}", err);
        prop_assert!(!format!("{err:?}").contains(&secret), "{:?}", err);
    }

    #[test]
    fn token_sets_never_show_their_tokens(
        access in secret_value(),
        refresh in secret_value(),
        expires_in in json_number(),
        now in any::<i64>(),
    ) {
        let url = Url::parse("https://as.example.com/token").unwrap();
        let body = serde_json::json!({
            "access_token": access, "token_type": "Bearer",
            "refresh_token": refresh, "expires_in": expires_in,
        });
        if let Ok(tokens) = parse_token_response(
            &url,
            &response(200, "application/json", body.to_string().into_bytes()),
            &[],
        ) {
            let shown = format!("{tokens:?}");
            prop_assert!(!shown.contains(&access) && !shown.contains(&refresh), "{}", shown);
            // Any expiry a server sends is computed without overflow.
            if let Some(at) = tokens.expires_at_ms(now) {
                prop_assert!(at >= now);
            }
        }
    }

    // --- callback query strings ---

    #[test]
    fn callback_queries_survive_anything(query in nasty_string(), advertised in any::<bool>()) {
        let params = CallbackParams::from_query(&query);
        let _ = validate_callback(&flow(), advertised, &params);
    }

    #[test]
    fn a_code_is_only_accepted_with_the_right_state_and_issuer(
        pairs in proptest::collection::vec(query_pair(), 0..7),
        advertised in any::<bool>(),
    ) {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&pairs)
            .finish();
        let first = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let flow = flow();
        let result = validate_callback(&flow, advertised, &CallbackParams::from_query(&query));
        let state = first("state");
        match &result {
            Ok(code) => {
                prop_assert_eq!(state.as_deref(), Some(flow.state.expose()));
                match first("iss") {
                    Some(iss) => prop_assert_eq!(iss, flow.issuer.clone()),
                    None => prop_assert!(!advertised),
                }
                prop_assert!(first("error").is_none());
                prop_assert_eq!(Some(code.expose().to_string()), first("code"));
            }
            Err(CallbackError::StateMismatch) => {
                prop_assert_ne!(state.as_deref(), Some(flow.state.expose()));
            }
            Err(e) => {
                // Errors quote no code and no state, except where the
                // callback itself put that text into a field they quote.
                let text = format!("{e} {e:?}");
                let quoted = |needle: &str| {
                    ["iss", "error", "error_description"]
                        .iter()
                        .any(|name| first(name).is_some_and(|v| v.contains(needle)))
                };
                let state = flow.state.expose();
                prop_assert!(!text.contains(state) || quoted(state), "{}", text);
                // (A code that happens to equal our issuer is only our issuer.)
                if let Some(code) = first("code").filter(|c| c.len() >= 4 && !flow.issuer.contains(c.as_str())) {
                    prop_assert!(!text.contains(&code) || quoted(&code), "{}", text);
                }
            }
        }
    }

    // --- token-file import ---

    #[test]
    fn token_files_survive_any_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        written in any::<i64>(),
        hermes in any::<bool>(),
    ) {
        let format = if hermes { TokenFileFormat::Hermes } else { TokenFileFormat::Generic };
        let _ = parse_file(format, &bytes, written);
    }

    #[test]
    fn token_files_survive_any_field_values_and_never_quote_themselves(
        access in secret_value(),
        refresh in secret_value(),
        expires_at in json_number(),
        expires_in in json_number(),
        token_type in prop_oneof![Just("Bearer".to_string()), nasty_string()],
        written in any::<i64>(),
        hermes in any::<bool>(),
        truncate in any::<bool>(),
    ) {
        let format = if hermes { TokenFileFormat::Hermes } else { TokenFileFormat::Generic };
        let doc = serde_json::json!({
            "access_token": access, "refresh_token": refresh,
            "expires_at": expires_at, "expires_in": expires_in, "token_type": token_type,
        })
        .to_string();
        let bytes = if truncate { &doc.as_bytes()[..doc.len() * 2 / 3] } else { doc.as_bytes() };
        match parse_file(format, bytes, written) {
            Ok(token) => {
                let shown = format!("{token:?}");
                prop_assert!(!shown.contains(&access) && !shown.contains(&refresh), "{}", shown);
            }
            Err(message) => {
                prop_assert!(!message.contains(&access) && !message.contains(&refresh), "{}", message);
            }
        }
    }

    // --- config.toml ---

    #[test]
    fn config_parser_survives_anything(text in nasty_string()) {
        let _ = Config::parse(&text, Path::new("config.toml"));
        let _ = ConfigDocument::parse(&text, Path::new("config.toml"));
    }

    #[test]
    fn config_errors_never_quote_the_client_secret(
        secret in secret_value(),
        at in any::<prop::sample::Index>(),
        junk in prop_oneof![Just("\""), Just("="), Just("["), Just("\n"), Just("\\"), Just("x"), Just("'''")],
    ) {
        let text = format!(
            "[servers.s]\nurl = \"https://mcp.example.com/mcp\"\nclient_id = \"c\"\nclient_secret = \"{secret}\"\ncallback_port = 4000\n"
        );
        let mut broken = text.clone();
        let mut i = at.index(text.len());
        while !broken.is_char_boundary(i) { i -= 1; }
        broken.insert_str(i, junk);
        if let Err(e) = Config::parse(&broken, Path::new("config.toml")) {
            let shown = format!("{e} {e:?}");
            prop_assert!(!shown.contains(&secret), "{}", shown);
        }
    }

    #[test]
    fn names_are_either_safe_or_refused(name in nasty_string()) {
        if let Ok(n) = ServerName::parse(&name) {
            prop_assert!(n.as_str().len() <= 64);
            prop_assert!(n.as_str().chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
            prop_assert!(n.as_str() != "." && n.as_str() != "..");
        }
    }

    #[test]
    fn added_servers_round_trip_and_comments_survive(
        names in proptest::collection::btree_set("[a-z0-9][a-z0-9._-]{0,20}", 1..4),
        server in small_url(),
        scopes in proptest::collection::vec("[a-z:_.]{1,12}", 0..3),
        comment in "[ -~]{0,40}",
    ) {
        let original = format!("# {comment}\n[servers.keep] # kept\nurl = \"https://mcp.example.com/mcp\"\n");
        let mut doc = ConfigDocument::parse(&original, Path::new("config.toml")).unwrap();
        let names: Vec<ServerName> = names.iter().filter_map(|n| ServerName::parse(n).ok()).collect();
        let https = server.scheme() == "https" || server.host_str() == Some("127.0.0.1") || server.host_str() == Some("[::1]");
        for name in &names {
            if name.as_str() == "keep" { continue; }
            doc.add(name, &NewServer {
                name: name.to_string(),
                url: server.to_string(),
                client_id: None,
                client_secret_file: None,
                scopes: scopes.clone(),
                callback_port: None,
                client_metadata_url: None,
                login_hint: None,
            });
        }
        let text = doc.to_text();
        prop_assert!(text.contains(&format!("# {comment}")), "{}", text);
        prop_assert!(text.contains("# kept"), "{}", text);
        match Config::parse(&text, Path::new("config.toml")) {
            Ok(config) => {
                for name in names.iter().filter(|n| n.as_str() != "keep") {
                    let got = &config.servers[name];
                    prop_assert_eq!(got.url.as_str(), server.as_str());
                    prop_assert_eq!(&got.scopes, &scopes);
                }
            }
            // Only a URL the policy refuses (plain http off loopback) may
            // make the result invalid.
            Err(e) => prop_assert!(!https, "{}: {}", e, text),
        }
    }
}

/// Inputs the properties above found, kept as plain tests.
mod regressions {
    use super::*;

    /// A token file whose `expires_in` is huge overflowed the expiry
    /// computation (a panic in debug builds, a wrapped time in release).
    #[test]
    fn a_huge_expires_in_in_a_token_file_saturates() {
        let token = parse_file(
            TokenFileFormat::Hermes,
            br#"{"access_token":"x","expires_in":1e300}"#,
            1_700_000_000_000,
        )
        .unwrap();
        assert_eq!(token.expires_at_ms, Some(i64::MAX));
    }

    /// The same in a token response: `expires_in` beyond i64 used to wrap
    /// to a negative lifetime, or overflow when added to now.
    #[test]
    fn a_huge_expires_in_in_a_token_response_saturates() {
        let url = Url::parse("https://as.example.com/token").unwrap();
        for value in ["18446744073709551615", "9223372036854775807", "1e300"] {
            let body =
                format!(r#"{{"access_token":"x","token_type":"Bearer","expires_in":{value}}}"#);
            let tokens = parse_token_response(
                &url,
                &response(200, "application/json", body.into_bytes()),
                &[],
            )
            .unwrap();
            assert_eq!(
                tokens.expires_at_ms(1_700_000_000_000),
                Some(i64::MAX),
                "{value}"
            );
        }
    }
}
