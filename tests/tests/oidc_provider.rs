//! Client credentials and the device flow against a real OAuth server:
//! node-oidc-provider (`tests/oidc/`, installed by `npm ci --prefix
//! tests/oidc`, which `.ci/run` does; this test does it too when the
//! packages are missing). It fronts a protected MCP endpoint whose
//! protected resource metadata names it, so discovery runs as for any
//! server.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use mcpauth_tests::{TestEnv, leaked, token_issued};

struct Provider {
    child: Child,
    /// Kept open: the server may write more (its stdout closed would be
    /// an EPIPE that ends it).
    _stdout: BufReader<std::process::ChildStdout>,
    issuer: String,
    mcp_url: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// Installs the pinned packages once, if `npm ci` has not been run.
fn install() {
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = ONCE.lock().unwrap();
    if dir().join("node_modules/oidc-provider").is_dir() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(dir())
        .status()
        .expect("npm is needed for these tests (Node 20+): install it, or run `npm ci --prefix tests/oidc`");
    assert!(status.success(), "npm ci --prefix tests/oidc failed");
}

fn start(token_ttl_secs: u64) -> Provider {
    start_with(token_ttl_secs, None)
}

/// With `client_jwk`, the client `svc-jwt` authenticates with
/// private_key_jwt, verified with that public key.
fn start_with(token_ttl_secs: u64, client_jwk: Option<&serde_json::Value>) -> Provider {
    install();
    let mut child = Command::new("node")
        .arg(dir().join("server.mjs"))
        .arg(token_ttl_secs.to_string())
        .args(client_jwk.map(|j| j.to_string()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node is needed for these tests (Node 20+)");
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    let started: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|_| panic!("oidc-provider did not start: {line:?}"));
    Provider {
        child,
        _stdout: stdout,
        issuer: started["issuer"].as_str().unwrap().into(),
        mcp_url: started["mcp_url"].as_str().unwrap().into(),
    }
}

impl Provider {
    /// Every request it saw (method, path, form field names, whether
    /// HTTP Basic was used, grant_type, resource).
    async fn requests(&self) -> Vec<serde_json::Value> {
        reqwest::get(format!("{}/test/requests", self.issuer))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The requests to its token endpoint.
    async fn token_requests(&self) -> Vec<serde_json::Value> {
        let mut all = self.requests().await;
        all.retain(|r| r["path"] == "/token");
        all
    }

    /// Whether the MCP endpoint takes `token`.
    async fn accepts(&self, token: &str) -> bool {
        reqwest::Client::new()
            .post(&self.mcp_url)
            .bearer_auth(token)
            .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    }

    async fn approve(&self, user_code: &str) {
        let status = reqwest::Client::new()
            .post(format!(
                "{}/test/approve?user_code={user_code}",
                self.issuer
            ))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "no device login with code {user_code}");
    }
}

fn start_daemon(env: &TestEnv) -> mcpauth_tests::Daemon {
    let mut cmd = env.command("mcpauthd");
    cmd.env(mcpauth_proto::env::LOG, "trace");
    env.spawn_daemon(&mut cmd).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_against_oidc_provider() {
    let provider = start(4);
    let env = TestEnv::new();
    let secret = env.home().join("svc-ci.secret");
    std::fs::write(&secret, "oidc-cc-secret-value-1\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    env.write_config(&format!(
        "[servers.s]\nurl = \"{}\"\ngrant = \"client_credentials\"\nclient_id = \"svc-ci\"\nclient_secret_file = \"{}\"\nscopes = [\"mcp:read\"]\n",
        provider.mcp_url,
        secret.display()
    ));
    let _daemon = start_daemon(&env);
    let mut events = env.events(Some("s")).await;
    let first = env.ctl(&["token", "s"]).ok().trim().to_string();
    let first_generation = token_issued(&mut events, "s", 0).await;
    assert!(provider.accepts(&first).await, "oidc-provider issued it");
    let token_requests = provider.token_requests().await;
    assert_eq!(token_requests.len(), 1);
    assert_eq!(token_requests[0]["grant_type"], "client_credentials");
    assert_eq!(token_requests[0]["basic"], true);
    assert_eq!(token_requests[0]["resource"], provider.mcp_url);

    // The token lives 4 s: asked for again, with no person.
    token_issued(&mut events, "s", first_generation).await;
    let second = env.ctl(&["token", "s"]).ok().trim().to_string();
    assert_ne!(first, second);
    assert!(provider.accepts(&second).await);
    let logs = env.all_daemon_logs();
    let secrets = vec![first, second, "oidc-cc-secret-value-1".to_string()];
    assert!(leaked(&logs, &secrets).is_none(), "a secret in the log");
}

/// private_key_jwt (RFC 7523): oidc-provider verifies each assertion's
/// signature, issuer, subject, audience, expiry and single use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_with_private_key_jwt_against_oidc_provider() {
    use base64::Engine;
    let (pem, key) = mcpauth_tests::grants_as::es256_key();
    let point = key.verifying_key().to_encoded_point(false);
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
        "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
    });
    let provider = start_with(3600, Some(&jwk));
    let env = TestEnv::new();
    let key_file = env.home().join("svc-jwt.pem");
    std::fs::write(&key_file, &pem).unwrap();
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    env.write_config(&format!(
        "[servers.s]\nurl = \"{}\"\ngrant = \"client_credentials\"\nclient_id = \"svc-jwt\"\nclient_key_file = \"{}\"\nclient_key_alg = \"ES256\"\nscopes = [\"mcp:read\"]\n",
        provider.mcp_url,
        key_file.display()
    ));
    let _daemon = start_daemon(&env);
    let first = env.ctl(&["token", "s"]).ok().trim().to_string();
    assert!(provider.accepts(&first).await, "oidc-provider issued it");
    // A forced renewal: a new assertion (oidc-provider takes a jti once).
    env.ctl(&["refresh", "s"]).ok();
    let second = env.ctl(&["token", "s"]).ok().trim().to_string();
    assert_ne!(first, second);
    assert!(provider.accepts(&second).await);
    let token_requests = provider.token_requests().await;
    assert_eq!(token_requests.len(), 2);
    for r in &token_requests {
        assert_eq!(r["grant_type"], "client_credentials");
        assert_eq!(r["basic"], false);
        let fields: Vec<&str> = r["fields"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f.as_str())
            .collect();
        assert!(fields.contains(&"client_assertion"), "{fields:?}");
        assert!(fields.contains(&"client_assertion_type"), "{fields:?}");
        assert!(!fields.contains(&"client_secret"), "{fields:?}");
    }
    let logs = env.all_daemon_logs();
    assert!(
        leaked(&logs, &[first, second, pem]).is_none(),
        "a secret in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_against_oidc_provider() {
    let provider = start(3600);
    let env = TestEnv::new();
    env.write_config(&format!(
        "[servers.s]\nurl = \"{}\"\nclient_id = \"device-client\"\n",
        provider.mcp_url
    ));
    let _daemon = start_daemon(&env);
    let mut login = env
        .command("mcpauthctl")
        .args(["login", "s", "--device"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(login.stderr.take().unwrap());
    let mut shown = String::new();
    let user_code = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "no user code in: {shown}"
        );
        shown.push_str(&line);
        if let Some(code) = line.trim().strip_prefix("code: ") {
            break code.to_string();
        }
    };
    assert!(
        shown.contains(&format!("{}/device", provider.issuer)),
        "{shown}"
    );
    // The person approves on another device (before the daemon's first
    // poll, which waits out oidc-provider's 5 s interval).
    provider.approve(&user_code).await;
    let out = mcpauth_tests::CtlOutput(login.wait_with_output().unwrap());
    assert!(out.ok().contains("logged in to s"));

    let requests = provider.requests().await;
    let authorization = requests
        .iter()
        .find(|r| r["path"] == "/device/auth")
        .expect("a device authorization request");
    let fields: Vec<&str> = authorization["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(fields.contains(&"resource") && fields.contains(&"client_id"));
    assert!(!fields.contains(&"code_challenge"), "no PKCE in RFC 8628");
    assert!(
        requests
            .iter()
            .filter(|r| r["path"] == "/token")
            .all(
                |r| r["grant_type"] == "urn:ietf:params:oauth:grant-type:device_code"
                    && r["resource"] == provider.mcp_url.as_str()
            )
    );
    let token = env.ctl(&["token", "s"]).ok().trim().to_string();
    assert!(provider.accepts(&token).await, "oidc-provider issued it");
    assert!(
        leaked(&env.all_daemon_logs(), &[token]).is_none(),
        "the token in the log"
    );
}
