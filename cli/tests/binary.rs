//! The CLI binary on its own (the end-to-end suite lives in `tests/`).

use std::process::Command;

fn mcpauthctl() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcpauthctl"));
    cmd.env_clear();
    cmd
}

#[test]
fn usage_errors_exit_with_2() {
    let out = mcpauthctl().arg("no-such-command").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = mcpauthctl().arg("add").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_documents_the_exit_codes() {
    let out = mcpauthctl().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for line in [
        "0  ok",
        "1  failure",
        "2  usage or invalid input",
        "3  daemon unreachable",
        "4  login or consent required",
    ] {
        assert!(help.contains(line), "{line:?} in {help}");
    }
}

#[test]
fn an_unreachable_daemon_is_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let out = mcpauthctl()
        .arg("--no-autostart")
        .arg("--socket")
        .arg(dir.path().join("none.sock"))
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not running"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}
