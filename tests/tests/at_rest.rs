//! Secrets at rest: after a login and refreshes, no secret the
//! authorization server issued (or received) is found in any file under
//! the state directory, with the store key in the OS keyring (a Secret
//! Service on a private D-Bus) and with the no-keyring fallback (a private
//! file elsewhere). A locked keyring: nothing secret is served, the line
//! says why, and unlocking it serves again without a restart.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mcpauth_tests::authserver::{AuthServer, Switches};
use mcpauth_tests::{SecretService, TestEnv};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if path.is_file() {
            out.push(path);
        }
    }
    out
}

/// Every secret `server` issued or was sent that some file under `dir`
/// holds, with the file.
fn secrets_on_disk(dir: &Path, server: &AuthServer) -> Vec<String> {
    let secrets = server.secrets();
    assert!(secrets.len() >= 4, "{secrets:?}");
    let mut found = Vec::new();
    for file in files(dir) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        for secret in &secrets {
            if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                found.push(format!("{} in {}", secret, file.display()));
            }
        }
    }
    found
}

/// A login and two refreshes (the first refresh token rotated out).
fn use_it(env: &TestEnv, server: &AuthServer) {
    env.ctl(&["add", "s", &server.mcp_url]).ok();
    env.ctl(&["login", "s"]).ok();
    env.ctl(&["refresh", "s"]).ok();
    env.ctl(&["refresh", "s"]).ok();
    let token = env.ctl(&["token", "s"]).ok().trim().to_string();
    assert!(server.is_valid_access_token(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_keyring_the_key_is_a_private_file_and_the_store_holds_no_secret() {
    let server = AuthServer::start(Switches::default()).await;
    let env = TestEnv::new();
    let daemon = env.start_daemon();
    use_it(&env, &server);
    let status = env.ctl(&["status", "--json"]).json();
    assert_eq!(status["daemon"]["store_key"]["source"], "file", "{status}");
    let key_file = PathBuf::from(status["daemon"]["store_key"]["detail"].as_str().unwrap());
    assert_eq!(key_file, env.home().join(".local/share/mcpauth/store-key"));
    assert!(!key_file.starts_with(env.state_dir()));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key_file), 0o600);
    assert_eq!(mode(key_file.parent().unwrap()), 0o700);
    let human = env.ctl(&["status"]).ok();
    assert!(human.contains("no OS keyring here"), "{human}");
    daemon.stop();
    let found = secrets_on_disk(&env.state_dir(), &server);
    assert!(found.is_empty(), "{found:?}");

    // A restart reads the same key: the tokens are served as they were.
    let _d = env.start_daemon();
    let token = env.ctl(&["token", "s"]).ok().trim().to_string();
    assert!(server.is_valid_access_token(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_keyring_the_key_lives_there_and_a_locked_keyring_serves_nothing_until_unlocked() {
    let env = TestEnv::new();
    let mut keyring = SecretService::start(&env);
    let server = AuthServer::start(Switches::default()).await;
    let start = |env: &TestEnv, keyring: &SecretService| {
        let mut daemon = env.command("mcpauthd");
        daemon.env("DBUS_SESSION_BUS_ADDRESS", &keyring.address);
        env.spawn_daemon(&mut daemon).unwrap()
    };
    let daemon = start(&env, &keyring);
    use_it(&env, &server);
    let status = env.ctl(&["status", "--json"]).json();
    assert_eq!(
        status["daemon"]["store_key"]["source"], "keyring",
        "{status}"
    );
    assert!(!env.home().join(".local/share/mcpauth/store-key").exists());
    daemon.stop();
    let found = secrets_on_disk(&env.state_dir(), &server);
    assert!(found.is_empty(), "{found:?}");

    // The keyring locks (a screen lock, a timeout); the daemon restarts.
    keyring.lock();
    let _d = start(&env, &keyring);
    let status = env.ctl(&["status", "--json"]).json();
    assert_eq!(
        status["daemon"]["store_key"]["source"], "locked",
        "{status}"
    );
    assert_eq!(status["servers"][0]["state"], "locked", "{status}");
    let human = env.ctl(&["status"]).ok();
    assert!(
        human.contains("secrets: LOCKED") && human.contains("unlock"),
        "{human}"
    );
    let refused = env.ctl(&["token", "s"]);
    assert_ne!(refused.code(), 0);
    assert!(refused.stdout().is_empty());
    assert_eq!(
        refused.stderr().trim().lines().count(),
        1,
        "{}",
        refused.stderr()
    );
    assert!(refused.stderr().contains("locked"), "{}", refused.stderr());

    // Unlocked: served again, without a restart.
    keyring.unlock();
    let deadline = Instant::now() + Duration::from_secs(15);
    let token = loop {
        let out = env.ctl(&["token", "s"]);
        if out.code() == 0 {
            break out.stdout().trim().to_string();
        }
        assert!(Instant::now() < deadline, "{}", out.stderr());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(server.is_valid_access_token(&token));
    let status = env.ctl(&["status", "--json"]).json();
    assert_eq!(
        status["daemon"]["store_key"]["source"], "keyring",
        "{status}"
    );
}
