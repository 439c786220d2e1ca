//! JWTs the broker makes or reads without trusting.
//!
//! - Client assertions (`private_key_jwt`, RFC 7523 §2.2 and §3): signed
//!   with the client's ES256 key, `iss` = `sub` = the client id, `aud` =
//!   the AS issuer, a short `exp` and a unique `jti`.
//! - Assertions the broker forwards (a workload identity token): their
//!   payload is decoded *without* verifying the signature (the AS does
//!   that) only to refuse, before anything is sent, one that has expired
//!   or that is meant for another audience.
//!
//! Keys and assertions travel as [`Secret`]s or in types whose `Debug`
//! shows nothing of them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Signer;
use serde::Deserialize;

use super::OAuthError;
use crate::secret::Secret;

/// The `client_assertion_type` of a JWT client assertion.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How long a client assertion is valid.
pub const ASSERTION_LIFETIME_SECS: i64 = 60;
/// Clock skew allowed when checking a forwarded assertion's `exp`: one
/// that expires within this margin is refused as expired (it would be by
/// the time the AS reads it).
pub const EXPIRY_MARGIN_SECS: i64 = 5;

/// A private signing key (P-256). Its `Debug` shows nothing of it, and
/// its memory is zeroed on drop (p256's own `Drop`).
pub struct SigningKey(p256::ecdsa::SigningKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

impl SigningKey {
    /// Reads a PEM key: PKCS#8 (`BEGIN PRIVATE KEY`) or SEC1 (`BEGIN EC
    /// PRIVATE KEY`). `what` names the file in errors (never the content).
    pub fn from_pem(pem: &Secret, what: &str) -> Result<Self, OAuthError> {
        use p256::pkcs8::DecodePrivateKey;
        let text = pem.expose();
        let key = p256::SecretKey::from_pkcs8_pem(text)
            .or_else(|_| p256::SecretKey::from_sec1_pem(text))
            .map_err(|_| OAuthError::KeyFile {
                path: what.to_string(),
                reason: "not a P-256 private key in PEM (PKCS#8 or SEC1) for ES256".into(),
            })?;
        Ok(Self(p256::ecdsa::SigningKey::from(key)))
    }

    /// A compact JWS (ES256) of `claims`.
    pub fn sign(&self, claims: &serde_json::Value) -> Secret {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{header}.{payload}");
        let signature: p256::ecdsa::Signature = self.0.sign(input.as_bytes());
        Secret::new(format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }
}

/// A client assertion for `client_id` at the AS `issuer`, made at
/// `now_secs`.
pub fn client_assertion(key: &SigningKey, client_id: &str, issuer: &str, now_secs: i64) -> Secret {
    let jti = crate::oauth::pkce::new_state();
    key.sign(&serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": issuer,
        "iat": now_secs,
        "exp": now_secs + ASSERTION_LIFETIME_SECS,
        "jti": jti,
    }))
}

/// The claims of a forwarded assertion that the broker checks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub iss: Option<String>,
    #[serde(default)]
    pub sub: Option<String>,
    /// A string or an array of strings (RFC 7519 §4.1.3).
    #[serde(default, deserialize_with = "audience")]
    pub aud: Vec<String>,
    #[serde(default)]
    pub exp: Option<i64>,
}

fn audience<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Aud>::deserialize(d)? {
        None => Vec::new(),
        Some(Aud::One(a)) => vec![a],
        Some(Aud::Many(a)) => a,
    })
}

/// Why a forwarded assertion is refused before it is sent. No variant
/// carries any of the assertion itself.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    #[error("it is not a JWT (three base64url parts with a JSON payload)")]
    Malformed,
    #[error("it has no exp claim")]
    NoExpiry,
    #[error("it expired {0}s ago")]
    Expired(i64),
    #[error("its audience ({found}) is not this authorization server ({expected})")]
    WrongAudience { expected: String, found: String },
}

/// Decodes the payload of a compact JWT without verifying its signature.
pub fn decode_unverified(jwt: &Secret) -> Result<Claims, AssertionError> {
    let mut parts = jwt.expose().trim().split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AssertionError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| AssertionError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AssertionError::Malformed)
}

/// The account an ID token names (OpenID Connect): its `email`, else its
/// `preferred_username`. Decoded without verifying: it is only shown.
pub fn id_token_account(id_token: &Secret) -> Option<String> {
    #[derive(Deserialize)]
    struct Person {
        #[serde(default)]
        email: Option<String>,
        #[serde(default)]
        preferred_username: Option<String>,
    }
    let payload = payload_of(id_token)?;
    let person: Person = serde_json::from_slice(&payload).ok()?;
    person
        .email
        .or(person.preferred_username)
        .and_then(shown_account)
}

/// The `sub` of an access token that is a JWT, decoded without verifying;
/// `None` for an opaque token.
pub fn access_token_subject(access_token: &Secret) -> Option<String> {
    decode_unverified(access_token)
        .ok()?
        .sub
        .and_then(shown_account)
}

/// The account of a token response: the ID token's, else the access
/// token's `sub` (see [`access_token_subject`]).
pub fn account_of(tokens: &super::token::TokenSet) -> Option<String> {
    tokens
        .id_token
        .as_ref()
        .and_then(id_token_account)
        .or_else(|| access_token_subject(&tokens.access_token))
}

/// An account name fit to show: one line, at most 256 bytes.
fn shown_account(a: String) -> Option<String> {
    let a = a.trim();
    (!a.is_empty() && a.len() <= 256 && !a.chars().any(char::is_control)).then(|| a.to_string())
}

fn payload_of(jwt: &Secret) -> Option<Vec<u8>> {
    let mut parts = jwt.expose().trim().split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()
}

/// Checks that `claims` are still valid at `now_secs` and that their
/// audience names one of `audiences` (the AS issuer, its token endpoint).
pub fn check_forwarded(
    claims: &Claims,
    audiences: &[&str],
    now_secs: i64,
) -> Result<(), AssertionError> {
    let exp = claims.exp.ok_or(AssertionError::NoExpiry)?;
    if exp <= now_secs.saturating_add(EXPIRY_MARGIN_SECS) {
        return Err(AssertionError::Expired(now_secs.saturating_sub(exp).max(0)));
    }
    if !claims.aud.iter().any(|a| audiences.contains(&a.as_str())) {
        let found: String = claims
            .aud
            .iter()
            .map(|a| super::sanitize(a, &[]))
            .collect::<Vec<_>>()
            .join(", ")
            .chars()
            .take(200)
            .collect();
        return Err(AssertionError::WrongAudience {
            expected: audiences.join(" or "),
            found: if found.is_empty() {
                "none".into()
            } else {
                found
            },
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;

    fn key() -> (SigningKey, p256::ecdsa::VerifyingKey) {
        let bytes: [u8; 32] = rand::random();
        let signing = p256::ecdsa::SigningKey::from_bytes(&bytes.into()).unwrap();
        let verifying = *signing.verifying_key();
        (SigningKey(signing), verifying)
    }

    #[test]
    fn client_assertions_are_signed_and_carry_the_claims() {
        let (key, verifying) = key();
        let jwt = client_assertion(&key, "svc", "https://as.example", 1_000);
        let text = jwt.expose().to_string();
        let (input, sig) = text.rsplit_once('.').unwrap();
        let sig =
            p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap()).unwrap();
        verifying.verify(input.as_bytes(), &sig).unwrap();
        let payload: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(input.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(payload["iss"], "svc");
        assert_eq!(payload["sub"], "svc");
        assert_eq!(payload["aud"], "https://as.example");
        assert_eq!(payload["exp"], 1_060);
        let other = client_assertion(&key, "svc", "https://as.example", 1_000);
        assert_ne!(
            decode_jti(&other),
            decode_jti(&jwt),
            "a unique jti per assertion"
        );
        assert_eq!(format!("{key:?}"), "SigningKey([redacted])");
    }

    fn decode_jti(jwt: &Secret) -> String {
        let payload = jwt.expose().split('.').nth(1).unwrap().to_string();
        let v: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        v["jti"].as_str().unwrap().to_string()
    }

    fn unsigned(claims: serde_json::Value) -> Secret {
        Secret::new(format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        ))
    }

    #[test]
    fn forwarded_assertions_are_checked_for_expiry_and_audience() {
        let aud = ["https://as.example", "https://as.example/token"];
        let ok = unsigned(serde_json::json!({"aud": ["x", "https://as.example"], "exp": 2_000}));
        assert_eq!(
            check_forwarded(&decode_unverified(&ok).unwrap(), &aud, 1_000),
            Ok(())
        );
        let one = unsigned(serde_json::json!({"aud": "https://as.example/token", "exp": 2_000}));
        assert!(check_forwarded(&decode_unverified(&one).unwrap(), &aud, 1_000).is_ok());
        let expired = unsigned(serde_json::json!({"aud": "https://as.example", "exp": 900}));
        assert_eq!(
            check_forwarded(&decode_unverified(&expired).unwrap(), &aud, 1_000),
            Err(AssertionError::Expired(100))
        );
        let elsewhere = unsigned(serde_json::json!({"aud": "https://other.example", "exp": 2_000}));
        assert!(matches!(
            check_forwarded(&decode_unverified(&elsewhere).unwrap(), &aud, 1_000),
            Err(AssertionError::WrongAudience { .. })
        ));
        let no_exp = unsigned(serde_json::json!({"aud": "https://as.example"}));
        assert_eq!(
            check_forwarded(&decode_unverified(&no_exp).unwrap(), &aud, 1_000),
            Err(AssertionError::NoExpiry)
        );
        assert_eq!(
            decode_unverified(&Secret::new("not-a-jwt")),
            Err(AssertionError::Malformed)
        );
    }

    #[test]
    fn the_account_comes_from_the_id_token_or_a_jwt_access_tokens_sub() {
        let jwt = |claims: serde_json::Value| {
            Secret::new(format!(
                "e30.{}.c2ln",
                URL_SAFE_NO_PAD.encode(claims.to_string())
            ))
        };
        let id = jwt(
            serde_json::json!({"sub": "1", "email": "ann@example.com", "preferred_username": "ann"}),
        );
        assert_eq!(id_token_account(&id).as_deref(), Some("ann@example.com"));
        let id = jwt(serde_json::json!({"sub": "1", "preferred_username": "ann"}));
        assert_eq!(id_token_account(&id).as_deref(), Some("ann"));
        assert_eq!(
            id_token_account(&jwt(serde_json::json!({"sub": "1"}))),
            None
        );
        let at = jwt(serde_json::json!({"sub": "user-7", "exp": 1}));
        assert_eq!(access_token_subject(&at).as_deref(), Some("user-7"));
        // An opaque token says nothing: nothing is guessed.
        assert_eq!(
            access_token_subject(&Secret::new("at-1-abc".to_string())),
            None
        );
        let bad = jwt(serde_json::json!({"sub": "a\nb"}));
        assert_eq!(access_token_subject(&bad), None);
    }
}
