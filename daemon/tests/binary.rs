//! The daemon binary on its own (the end-to-end suite lives in `tests/`).

use std::process::Command;

fn mcpauthd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcpauthd"));
    cmd.env_clear();
    cmd
}

#[test]
fn prints_its_version() {
    let out = mcpauthd().arg("--version").output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        format!("mcpauthd {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn fails_cleanly_when_it_cannot_create_its_socket() {
    // /proc is not ours to create a socket in: the daemon must fail with a
    // message and a non-zero exit, not panic.
    let out = mcpauthd()
        .args(["--socket", "/proc/mcpauth-test/mcpauthd.sock"])
        .args(["--state-dir", "/proc/mcpauth-test-state"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("mcpauthd: error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
