//! The architecture invariants that grep can check (ARCHITECTURE.md,
//! "Invariants"), checked on every test run instead of by discipline.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every `.rs` file under `dir`, relative to the repository root.
fn sources(dir: &str) -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join(dir), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let rel = p.strip_prefix(root()).unwrap().display().to_string();
            (rel, text)
        })
        .collect()
}

/// The code of a file: comments dropped, and everything from the first
/// `#[cfg(test)]` on (unit tests may build state directly).
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap();
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Files under `dir` whose code contains any of `needles`, except `allowed`.
fn offenders(dir: &str, needles: &[&str], allowed: &[&str]) -> Vec<String> {
    sources(dir)
        .into_iter()
        .filter(|(path, _)| !allowed.contains(&path.as_str()))
        .filter(|(_, text)| {
            let code = code(text);
            needles.iter().any(|n| code.contains(n))
        })
        .map(|(path, _)| path)
        .collect()
}

#[test]
fn only_the_rpc_layer_and_the_client_library_know_tonic_and_prost() {
    let found = offenders(
        "daemon/src",
        &[
            "tonic::",
            "prost::",
            "use tonic",
            "use prost",
            "mcpauth_proto::pb",
        ],
        &["daemon/src/rpc.rs"],
    );
    assert!(found.is_empty(), "tonic/prost outside rpc.rs: {found:?}");
    let found = offenders(
        "cli/src",
        &["tonic::", "prost::", "use tonic", "use prost"],
        &["cli/src/lib.rs", "cli/src/main.rs"],
    );
    assert!(
        found.is_empty(),
        "tonic/prost outside the client library: {found:?}"
    );
}

#[test]
fn only_the_store_knows_sled() {
    let found = offenders(
        "daemon/src",
        &["sled::", "use sled"],
        &["daemon/src/store.rs"],
    );
    assert!(found.is_empty(), "sled outside store.rs: {found:?}");
}

#[test]
fn the_oauth_engine_knows_nothing_of_grpc_the_store_or_the_broker() {
    let found = offenders(
        "daemon/src/oauth",
        &[
            "tonic",
            "prost",
            "sled",
            "crate::rpc",
            "crate::store",
            "crate::broker",
            "crate::locks",
        ],
        &[],
    );
    assert!(found.is_empty(), "the OAuth engine reaches out: {found:?}");
}

#[test]
fn one_place_refreshes_and_one_place_installs_a_grant() {
    // The token request of a refresh: only in refresh.rs.
    let found = offenders(
        "daemon/src",
        &[
            ".refresh(&discovery",
            "http.refresh(",
            "(\"grant_type\", \"refresh_token\")",
        ],
        &["daemon/src/refresh.rs", "daemon/src/oauth/token.rs"],
    );
    assert!(
        found.is_empty(),
        "a refresh request outside refresh_grant: {found:?}"
    );
    let refresh = std::fs::read_to_string(root().join("daemon/src/refresh.rs")).unwrap();
    let unwrapped: String = code(&refresh).split_whitespace().collect();
    assert_eq!(
        unwrapped.matches(".refresh(&discovery").count(),
        1,
        "one refresh request, in refresh_locked"
    );
    // A grant is written only by the store's install, called only by
    // Broker::install_grant.
    let found = offenders(
        "daemon/src",
        &["store().install_grant(", "store.install_grant("],
        &["daemon/src/install.rs"],
    );
    assert!(
        found.is_empty(),
        "a grant write outside install.rs: {found:?}"
    );
    let store = code(&std::fs::read_to_string(root().join("daemon/src/store.rs")).unwrap());
    assert_eq!(
        store.matches("grants.insert(").count(),
        1,
        "the grants tree is written in one place (the install transaction)"
    );
    let install = code(&std::fs::read_to_string(root().join("daemon/src/install.rs")).unwrap());
    assert_eq!(
        install.matches("install_grant(").count(),
        2,
        "defined once, calls the store once"
    );
}

#[test]
fn tokens_leave_the_daemon_in_one_place() {
    let rpc = code(&std::fs::read_to_string(root().join("daemon/src/rpc.rs")).unwrap());
    // (A logout reply's `access_token` field says what became of it.)
    assert_eq!(
        rpc.lines()
            .filter(|l| l.contains("access_token:") && !l.contains("map(revocation)"))
            .count(),
        1,
        "one wire field carries a token"
    );
    let found = offenders(
        "daemon/src",
        &["access_token.expose()"],
        &[
            "daemon/src/rpc.rs",
            // Token files are a way out the person configured; the token
            // service only fingerprints the token to compare it.
            "daemon/src/files.rs",
            "daemon/src/tokens.rs",
        ],
    );
    assert!(found.is_empty(), "a token exposed elsewhere: {found:?}");
}

#[test]
fn every_state_write_takes_the_servers_guard() {
    let store = code(&std::fs::read_to_string(root().join("daemon/src/store.rs")).unwrap());
    for method in [
        "put_server",
        "delete_server",
        "install_grant",
        "delete_grant",
        "put_registration",
        "delete_registration",
        "delete_registrations",
        "put_flow",
        "delete_flow",
    ] {
        let signature = store
            .split(&format!("pub async fn {method}("))
            .nth(1)
            .unwrap_or_else(|| panic!("Store::{method} exists"));
        let params = signature.split(')').next().unwrap();
        assert!(
            params.contains("guard: &ServerGuard"),
            "Store::{method} must take the server's guard: ({params})"
        );
    }
}

#[test]
fn every_daemon_module_is_on_the_map() {
    let arch = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let lib = std::fs::read_to_string(root().join("daemon/src/lib.rs")).unwrap();
    let layout: String = lib
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    for line in lib.lines() {
        let Some(rest) = line
            .strip_prefix("pub mod ")
            .or_else(|| line.strip_prefix("pub(crate) mod "))
            .or_else(|| line.strip_prefix("mod "))
        else {
            continue;
        };
        let module = rest.trim_end_matches(';');
        let file = if module == "oauth" {
            "`oauth/`".to_string()
        } else {
            format!("`{module}.rs`")
        };
        assert!(
            arch.contains(&file),
            "ARCHITECTURE.md's code map lacks {file}"
        );
        assert!(
            layout.contains(&format!("[`{module}`]")),
            "lib.rs's layout doc lacks [`{module}`]"
        );
    }
}

#[test]
fn grants_without_a_person_share_the_one_refresh_path() {
    // An unattended grant is obtained and renewed only by refresh_grant
    // (which calls renew_unattended under the server's guard).
    let found = offenders(
        "daemon/src",
        &["renew_unattended("],
        &["daemon/src/refresh.rs", "daemon/src/unattended.rs"],
    );
    assert!(
        found.is_empty(),
        "an unattended grant obtained elsewhere: {found:?}"
    );
    let refresh = code(&std::fs::read_to_string(root().join("daemon/src/refresh.rs")).unwrap());
    assert_eq!(refresh.matches(".renew_unattended(").count(), 1);
    // Their token requests, and the device polls, have one caller each.
    // (enterprise.rs's requests run inside renew_unattended.)
    for (call, homes) in [
        (".client_credentials(", &["daemon/src/unattended.rs"][..]),
        (
            ".jwt_bearer(",
            &["daemon/src/unattended.rs", "daemon/src/enterprise.rs"][..],
        ),
        (".exchange_for_id_jag(", &["daemon/src/enterprise.rs"][..]),
        (".poll_device(", &["daemon/src/device.rs"][..]),
        (".device_authorization(", &["daemon/src/device.rs"][..]),
    ] {
        let mut allowed = homes.to_vec();
        allowed.push("daemon/src/oauth/grants.rs");
        let found = offenders("daemon/src", &[call], &allowed);
        assert!(found.is_empty(), "{call} outside {homes:?}: {found:?}");
    }
    let unattended =
        code(&std::fs::read_to_string(root().join("daemon/src/unattended.rs")).unwrap());
    assert_eq!(
        unattended.matches(".enterprise_tokens(").count(),
        1,
        "the ID-JAG exchange runs only inside renew_unattended"
    );
}

#[test]
fn secrets_are_exposed_only_where_they_leave() {
    // Keys, client secrets, assertions and device codes reach the wire in
    // the OAuth engine only; the broker's modules (the device flow and the
    // unattended grants among them) pass them as `Secret`s. Tokens leave
    // through rpc.rs and token files; tokens.rs only fingerprints them.
    let found = offenders(
        "daemon/src",
        &[".expose()"],
        &[
            "daemon/src/rpc.rs",
            "daemon/src/files.rs",
            "daemon/src/tokens.rs",
            "daemon/src/secret.rs",
            "daemon/src/oauth/token.rs",
            "daemon/src/oauth/grants.rs",
            "daemon/src/oauth/jwt.rs",
            "daemon/src/oauth/flow.rs",
            "daemon/src/oauth/pkce.rs",
            // check_token: a token shown to its own server, to check it.
            "daemon/src/oauth/http.rs",
            // A tool's keyring entry read as its JSON, as import.rs reads
            // the tools' files.
            "daemon/src/keyring.rs",
        ],
    );
    assert!(found.is_empty(), "a secret exposed in: {found:?}");
}
