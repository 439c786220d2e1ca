//! Reading the credentials `config.toml` names (client secrets, keys,
//! assertions) for one request, as `Secret`s, with errors that name the
//! file and never its content.

use std::path::Path;

use crate::config::{ClientSecret, ServerConfig};
use crate::fsutil::{CredentialError, CredentialFile, read_credential};
use crate::oauth::OAuthError;
use crate::oauth::jwt::{self, SigningKey};
use crate::oauth::token::ClientAuth;
use crate::secret::Secret;
use crate::state::Discovery;

/// Reads a credential file (`fsutil::read_credential`, which refuses one
/// that is not safe to use), the I/O failure worded by `io`.
pub fn read_file(
    path: &Path,
    kind: CredentialFile,
    io: impl FnOnce(String, String) -> OAuthError,
) -> Result<Secret, OAuthError> {
    read_credential(path, kind).map_err(|e| match e {
        CredentialError::Refused(line) => OAuthError::UnsafeFile(line),
        CredentialError::Io(e) => io(path.display().to_string(), e.to_string()),
    })
}

/// A configured client secret, read (from its file) for one request.
pub fn read_client_secret(secret: &ClientSecret) -> Result<Secret, OAuthError> {
    match secret {
        ClientSecret::Inline(s) => Ok(s.clone()),
        ClientSecret::File(path) => {
            read_file(path, CredentialFile::ClientSecret, |path, reason| {
                OAuthError::SecretFile { path, reason }
            })
        }
    }
}

/// The client's credentials as configured, read for one request.
pub struct Credentials {
    client_id: Option<String>,
    secret: Option<Secret>,
    key: Option<SigningKey>,
}

impl Credentials {
    pub fn read(server: &ServerConfig) -> Result<Self, OAuthError> {
        let secret = server
            .client_secret
            .as_ref()
            .map(read_client_secret)
            .transpose()?;
        let key = match &server.client_key {
            None => None,
            Some(key) => {
                let what = key.path.display().to_string();
                let pem = read_file(&key.path, CredentialFile::ClientKey, |path, reason| {
                    OAuthError::KeyFile { path, reason }
                })?;
                Some(SigningKey::from_pem(&pem, &what)?)
            }
        };
        Ok(Self {
            client_id: server.client_id.clone(),
            secret,
            key,
        })
    }

    /// The authentication for a request to `discovery`'s AS at `now_ms`.
    pub fn auth(&self, discovery: &Discovery, now_ms: i64) -> ClientAuth<'_> {
        let Some(client_id) = self.client_id.as_deref() else {
            return ClientAuth::Anonymous;
        };
        if let Some(key) = &self.key {
            return ClientAuth::Assertion {
                client_id,
                assertion: jwt::client_assertion(key, client_id, &discovery.issuer, now_ms / 1000),
            };
        }
        match &self.secret {
            None => ClientAuth::Public { client_id },
            Some(secret) => {
                let post_only = discovery
                    .metadata
                    .token_endpoint_auth_methods_supported
                    .as_ref()
                    .is_some_and(|m| {
                        !m.iter().any(|m| m == "client_secret_basic")
                            && m.iter().any(|m| m == "client_secret_post")
                    });
                if post_only {
                    ClientAuth::Post { client_id, secret }
                } else {
                    ClientAuth::Basic { client_id, secret }
                }
            }
        }
    }
}
