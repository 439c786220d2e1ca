//! mcpauthctl against a real (or deliberately wrong) daemon: autostart,
//! the protocol handshake, service units, output shapes, and secrets.

use std::pin::Pin;
use std::time::Duration;

use mcpauth_client::pb::{self, broker_server};
use mcpauth_tests::TestEnv;
use tonic::{Request, Response, Status};

#[test]
fn a_command_starts_the_daemon_on_demand() {
    let env = TestEnv::new();
    assert!(!env.socket().exists());
    let status = env.ctl(&["status", "--json"]).json();
    assert_eq!(status["daemon"]["protocol"], mcpauth_proto::PROTOCOL);
    assert_eq!(
        status["daemon"]["socket"],
        env.socket().display().to_string()
    );
    let pid = status["daemon"]["pid"].as_i64().unwrap() as i32;
    // The same daemon serves the next command.
    let again = env.ctl(&["status", "--json"]).json();
    assert_eq!(again["daemon"]["pid"], pid);
    // Its output went to the log in the state directory.
    let log = std::fs::read_to_string(env.state_dir().join("mcpauthd.log")).unwrap();
    assert!(log.contains("ready"), "{log}");
    env.ctl(&["stop"]).ok();
    assert!(!env.socket().exists());
    // It has exited (a zombie counts: the daemon is reparented to pid 1,
    // which in some sandboxes never reaps it).
    let gone = (0..100).any(|_| {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let exited = state.is_empty()
            || state
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z');
        if !exited {
            std::thread::sleep(Duration::from_millis(20));
        }
        exited
    });
    assert!(gone, "the daemon exited after `mcpauthctl stop`");
}

#[test]
fn concurrent_commands_start_one_daemon() {
    let env = TestEnv::new();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let mut cmd = env.command("mcpauthctl");
            cmd.args(["status", "--json"]);
            std::thread::spawn(move || cmd.output().unwrap())
        })
        .collect();
    let mut pids = std::collections::BTreeSet::new();
    for h in handles {
        let out = h.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        pids.insert(json["daemon"]["pid"].as_i64().unwrap());
    }
    assert_eq!(pids.len(), 1, "one daemon for everyone: {pids:?}");
    env.ctl(&["stop"]).ok();
}

#[test]
fn no_autostart_reports_an_unreachable_daemon_with_exit_3() {
    let env = TestEnv::new();
    let no_manager = env.path_with_systemctl(false);
    let out = env.ctl_env(&["--no-autostart", "status"], &[("PATH", &no_manager)]);
    assert_eq!(out.code(), 3);
    let stderr = out.stderr();
    assert!(stderr.contains("not running"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    // The next step: never `mcpauthd` in the foreground, which would hold
    // the terminal, nor a flag the person may never have typed (a host
    // entry carries it), nor a service no manager runs here to start.
    assert!(
        stderr.contains("start it with `mcpauthctl start`"),
        "{stderr}"
    );
    assert!(!stderr.contains("--no-autostart"), "{stderr}");
    assert!(!stderr.contains("service install"), "{stderr}");
    assert!(!stderr.contains("`mcpauthd`"), "{stderr}");
    assert!(!env.socket().exists(), "nothing was started");
    // Where a user service manager runs, the service is the other way.
    let manager = env.path_with_systemctl(true);
    let stderr = env
        .ctl_env(&["--no-autostart", "status"], &[("PATH", &manager)])
        .stderr();
    assert!(
        stderr.contains(
            "start it with `mcpauthctl start`, or keep it running with `mcpauthctl service install`"
        ),
        "{stderr}"
    );
    // `start` starts it, even with --no-autostart, and says so.
    let out = env.ctl_env(&["--no-autostart", "start"], &[("PATH", &no_manager)]);
    assert!(
        out.ok().starts_with("mcpauthd is running (pid "),
        "{}",
        out.stdout()
    );
    env.ctl(&["stop"]).ok();
}

#[test]
fn a_failing_daemon_start_is_explained() {
    let env = TestEnv::new();
    // An insecure socket directory makes the daemon refuse to start.
    env.make_socket_dir(0o755);
    let out = env.ctl(&["status"]);
    assert_eq!(out.code(), 3);
    let stderr = out.stderr();
    assert!(stderr.contains("could not start mcpauthd"), "{stderr}");
    assert!(
        stderr.contains("chmod 700"),
        "the daemon's reason is shown: {stderr}"
    );
}

#[test]
fn service_install_writes_units_with_the_real_binary_path() {
    let env = TestEnv::new();
    let out = env.ctl(&["service", "install", "--no-enable"]).ok();
    let unit_dir = env.config_home().join("systemd/user");
    let service = std::fs::read_to_string(unit_dir.join("mcpauthd.service")).unwrap();
    let daemon = std::fs::canonicalize(mcpauth_tests::bin("mcpauthd")).unwrap();
    assert!(
        service.contains(&format!(
            "ExecStart={} --socket %t/mcpauth/mcpauthd.sock",
            daemon.display()
        )),
        "{service}"
    );
    assert!(service.contains("Type=notify"));
    let socket = std::fs::read_to_string(unit_dir.join("mcpauthd.socket")).unwrap();
    assert!(socket.contains("ListenStream=%t/mcpauth/mcpauthd.sock"));
    assert!(out.contains("systemctl --user"), "{out}");

    // A managed daemon is never started by hand: with a user manager
    // there (a systemctl that answers), the CLI says how to start it.
    let bin = env.root.path().join("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("systemctl"), "#!/bin/sh\nexit 0\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            bin.join("systemctl"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let status = env.ctl_env(&["status"], &[("PATH", &path)]);
    assert_eq!(status.code(), 3);
    assert!(
        status
            .stderr()
            .contains("systemctl --user start mcpauthd.socket"),
        "{}",
        status.stderr()
    );
    assert!(!env.socket().exists());

    env.ctl(&["service", "uninstall", "--no-disable"]).ok();
    assert!(!unit_dir.join("mcpauthd.service").exists());
    assert!(!unit_dir.join("mcpauthd.socket").exists());
}

#[test]
fn status_json_has_the_documented_shape() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon();
    env.ctl(&["add", "a", "https://a.example/mcp", "--scope", "read"])
        .ok();
    let status = env.ctl(&["status", "--json"]).json();
    for key in [
        "version",
        "protocol",
        "pid",
        "uptime_ms",
        "socket",
        "state_dir",
        "config_path",
        "socket_activated",
        "store_key",
    ] {
        assert!(status["daemon"].get(key).is_some(), "daemon.{key}");
    }
    for key in ["ok", "error", "loaded_at_unix_ms", "error_at_unix_ms"] {
        assert!(status["config"].get(key).is_some(), "config.{key}");
    }
    let server = &status["servers"][0];
    for key in [
        "name",
        "url",
        "state",
        "client_id",
        "has_client_secret",
        "scopes",
        "callback_port",
        "client_metadata_url",
        "token_expires_at_unix_ms",
        "last_refresh_unix_ms",
        "last_error",
        "added_at_unix_ms",
    ] {
        assert!(server.get(key).is_some(), "server.{key}");
    }
    assert_eq!(server["state"], "login_required");
    let human = env.ctl(&["status"]).ok();
    assert!(
        human.contains("NAME") && human.contains("LAST ERROR"),
        "{human}"
    );
    assert!(human.contains("login required"), "{human}");
}

#[test]
fn secrets_never_reach_logs_output_or_errors() {
    const SECRET: &str = "hunter2-client-secret-do-not-print";
    let env = TestEnv::new();
    env.write_config(&format!(
        "[servers.a]\nurl = \"https://a.example/mcp\"\nclient_id = \"cid\"\nclient_secret = \"{SECRET}\"\n"
    ));
    let mut cmd = env.command("mcpauthd");
    cmd.env(mcpauth_proto::env::LOG, "trace");
    let daemon = env.spawn_daemon(&mut cmd).unwrap();
    let mut outputs = Vec::new();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["list", "--json"],
        &["show", "a"],
        &["show", "a", "--json"],
    ] {
        let out = env.ctl(args);
        outputs.push(out.stdout());
        outputs.push(out.stderr());
    }
    assert!(
        outputs
            .iter()
            .any(|o| o.contains("\"has_client_secret\": true"))
    );
    // A broken edit whose broken line holds the secret.
    env.write_config(&format!(
        "[servers.a]\nurl = \"https://a.example/mcp\"\nclient_id = \"cid\"\nclient_secret = \"{SECRET}\n"
    ));
    // Until the daemon has seen it; every status on the way is checked too.
    mcpauth_tests::wait_until(
        Duration::from_secs(10),
        "the broken edit to be seen",
        || {
            let status = env.ctl(&["status", "--json"]);
            outputs.push(status.stdout());
            outputs.push(status.stderr());
            status.json()["config"]["ok"] == false
        },
    );
    let log = daemon.stop();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "verbose logging was on"
    );
    for text in outputs.iter().chain([&log]) {
        assert!(!text.contains(SECRET), "secret leaked:\n{text}");
        assert!(!text.contains("hunter2"), "secret leaked:\n{text}");
    }
}

// --- What a new user meets (issue 14) ----------------------------------

/// Nothing was started: no socket (nor its directory) and no daemon log.
fn assert_no_daemon(env: &TestEnv, what: &str) {
    assert!(
        !env.socket_dir().exists(),
        "{what} made the socket directory"
    );
    assert!(
        !env.state_dir().join("mcpauthd.log").exists(),
        "{what} started a daemon"
    );
}

/// The single line a failing command printed, without the program name.
fn one_line_error(out: &mcpauth_tests::CtlOutput) -> String {
    let stderr = out.stderr();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    stderr
        .trim_end()
        .strip_prefix("mcpauthctl: ")
        .unwrap_or_else(|| panic!("prefixed with the program name: {stderr}"))
        .to_string()
}

#[test]
fn completions_are_generated_for_each_shell_without_a_daemon() {
    let env = TestEnv::new();
    for shell in ["bash", "zsh", "fish"] {
        let script = env.ctl(&["completions", shell]).ok();
        assert!(script.len() > 500, "{shell}: {script}");
        for word in ["login", "token", "add", "completions"] {
            assert!(script.contains(word), "{shell} script mentions {word}");
        }
    }
    let script = env.root.path().join("mcpauthctl.bash");
    std::fs::write(&script, env.ctl(&["completions", "bash"]).ok()).unwrap();
    let syntax = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("run bash");
    assert!(
        syntax.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    // And it completes: `mcpauthctl lo<TAB>`, `mcpauthctl completions <TAB>`.
    let complete = |words: &str, cword: usize| {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source \"$1\"; COMP_WORDS=({words}); COMP_CWORD={cword}; \
                 _mcpauthctl mcpauthctl \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; \
                 echo \"${{COMPREPLY[*]}}\""
            ))
            .arg("bash")
            .arg(&script)
            .output()
            .expect("run bash");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(complete("mcpauthctl lo", 1), "login logout");
    let shells = complete("mcpauthctl completions ''", 2);
    assert!(shells.ends_with("bash zsh fish"), "{shells}");
    assert_no_daemon(&env, "completions");
}

#[test]
fn the_man_page_is_roff_and_documents_every_command_without_a_daemon() {
    let env = TestEnv::new();
    let page = env.ctl(&["man"]).ok();
    let lines: Vec<&str> = page.lines().collect();
    // The .TH header comes first (after the apostrophe preamble roff
    // writers put before it), ahead of every section.
    let th = lines
        .iter()
        .position(|l| l.starts_with(".TH mcpauthctl 1"))
        .unwrap_or_else(|| panic!("a .TH header: {page}"));
    assert!(th < 3, "{page}");
    assert!(lines[..th].iter().all(|l| !l.starts_with(".SH")), "{page}");
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH COMMANDS",
        ".SH \"EXIT STATUS\"",
    ] {
        assert!(lines.contains(&section), "{section} in {page}");
    }
    // Each command is documented in this page (not in pages per command
    // that are never installed), with its arguments and examples.
    assert!(
        page.contains("\\fBmcpauthctl login [OPTIONS] [NAME]\\fR"),
        "{page}"
    );
    assert!(page.contains("\\fB\\-\\-no\\-browser\\fR"), "{page}");
    assert!(page.contains("TOKEN=$(mcpauthctl token linear)"), "{page}");
    assert!(!page.contains("mcpauthctl-login(1)"), "{page}");
    assert_no_daemon(&env, "man");
}

#[test]
fn bare_mcpauthctl_prints_the_help_and_exits_2() {
    let env = TestEnv::new();
    let out = env.ctl(&[]);
    assert_eq!(out.code(), 2);
    let help = out.stderr();
    for part in [
        "Control the mcpauth broker",
        "Usage: mcpauthctl [OPTIONS] <COMMAND>",
        "Commands:",
        "login",
        "token",
        "completions",
        "Exit codes:",
    ] {
        assert!(help.contains(part), "{part:?} in {help}");
    }
    // Not the library crate's description.
    assert!(!help.contains("client library"), "{help}");
    assert_no_daemon(&env, "bare mcpauthctl");
}

#[test]
fn token_help_explains_name_and_shows_examples() {
    let env = TestEnv::new();
    let help = env.ctl(&["token", "--help"]).ok();
    for part in [
        "The server's name, as in `mcpauthctl list`",
        "TOKEN=$(mcpauthctl token linear)",
        "curl -H \"Authorization: Bearer $(mcpauthctl token linear)\"",
        "401 or 403",
    ] {
        assert!(help.contains(part), "{part:?} in {help}");
    }
    for command in ["show", "remove", "login", "logout", "refresh", "headers"] {
        let help = env.ctl(&[command, "--help"]).ok();
        assert!(
            help.contains("The server's name, as in `mcpauthctl list`"),
            "{command} --help: {help}"
        );
    }
    assert_no_daemon(&env, "--help");
}

#[test]
fn a_rejection_status_other_than_401_or_403_is_refused_in_one_line() {
    let env = TestEnv::new();
    let token = "rejected-token-must-not-be-printed";
    for status in ["500", "402", "200"] {
        let out = env.ctl(&["token", "x", "--rejected", token, "--status", status]);
        assert_eq!(out.code(), 2, "{}", out.stderr());
        assert_eq!(
            one_line_error(&out),
            "--status must be 401 or 403 (the HTTP status the server answered with)"
        );
        assert!(!out.stdout().contains(token) && !out.stderr().contains(token));
    }
    assert_no_daemon(&env, "a refused --status");
}

#[test]
fn a_duplicate_add_says_how_to_see_or_remove_the_existing_server() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon();
    env.ctl(&["add", "x", "https://x.example/mcp"]).ok();
    let dup = env.ctl(&["add", "x", "https://other.example/mcp"]);
    assert_eq!(dup.code(), 2);
    assert_eq!(
        one_line_error(&dup),
        "a server named \"x\" already exists; see it with `mcpauthctl show x`, \
         or remove it first with `mcpauthctl remove x`"
    );
    // The first one is untouched.
    assert_eq!(
        env.ctl(&["show", "x", "--json"]).json()["url"],
        "https://x.example/mcp"
    );
}

#[test]
fn a_url_without_a_scheme_is_refused_with_the_url_to_use() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon();
    let out = env.ctl(&["add", "x", "example.com/mcp"]);
    assert_eq!(out.code(), 2);
    assert_eq!(
        one_line_error(&out),
        "invalid URL for server x: it needs a scheme; use https://example.com/mcp"
    );
    let out = env.ctl(&["add", "local", "localhost:8080/mcp"]);
    assert_eq!(out.code(), 2);
    let message = one_line_error(&out);
    assert!(
        message.contains("use http://localhost:8080/mcp"),
        "{message}"
    );
    // Nothing was added; the suggestion works.
    assert_eq!(env.ctl(&["list", "--json"]).json(), serde_json::json!([]));
    env.ctl(&["add", "x", "https://example.com/mcp"]).ok();
}

// --- A daemon of another protocol --------------------------------------

struct FutureDaemon;

type Events = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl broker_server::Broker for FutureDaemon {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        Ok(Response::new(pb::StatusReply {
            version: "9.0.0".into(),
            protocol: 999,
            ..Default::default()
        }))
    }
    async fn shutdown(
        &self,
        _: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownReply>, Status> {
        Ok(Response::new(pb::ShutdownReply {}))
    }
    async fn list_servers(
        &self,
        _: Request<pb::ListServersRequest>,
    ) -> Result<Response<pb::ListServersReply>, Status> {
        Err(Status::unimplemented("future"))
    }
    async fn get_server(
        &self,
        _: Request<pb::GetServerRequest>,
    ) -> Result<Response<pb::Server>, Status> {
        Err(Status::unimplemented("future"))
    }
    async fn add_server(
        &self,
        _: Request<pb::AddServerRequest>,
    ) -> Result<Response<pb::Server>, Status> {
        Err(Status::unimplemented("future"))
    }
    async fn remove_server(
        &self,
        _: Request<pb::RemoveServerRequest>,
    ) -> Result<Response<pb::RemoveServerReply>, Status> {
        Err(Status::unimplemented("future"))
    }
    type WatchStream = Events;
    async fn watch(&self, _: Request<pb::WatchRequest>) -> Result<Response<Events>, Status> {
        Err(Status::unimplemented("future"))
    }
    type LoginStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LoginEvent, Status>> + Send>>;
    async fn login(
        &self,
        _: Request<pb::LoginRequest>,
    ) -> Result<Response<Self::LoginStream>, Status> {
        Err(Status::unimplemented("future"))
    }
    async fn complete_login(
        &self,
        _: Request<pb::CompleteLoginRequest>,
    ) -> Result<Response<pb::LoginResult>, Status> {
        Err(Status::unimplemented("future"))
    }
    async fn cancel_login(
        &self,
        _: Request<pb::CancelLoginRequest>,
    ) -> Result<Response<pb::CancelLoginReply>, Status> {
        Err(Status::unimplemented("future"))
    }
    async fn logout(
        &self,
        _: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutReply>, Status> {
        Err(Status::unimplemented("future"))
    }
    async fn refresh(
        &self,
        _: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshReply>, Status> {
        Err(Status::unimplemented("future"))
    }
    async fn get_token(
        &self,
        _: Request<pb::GetTokenRequest>,
    ) -> Result<Response<pb::TokenReply>, Status> {
        Err(Status::unimplemented("future"))
    }
    async fn report_unauthorized(
        &self,
        _: Request<pb::ReportUnauthorizedRequest>,
    ) -> Result<Response<pb::TokenReply>, Status> {
        Err(Status::unimplemented("future"))
    }
    async fn import(
        &self,
        _: Request<pb::ImportRequest>,
    ) -> Result<Response<pb::ImportReply>, Status> {
        Err(Status::unimplemented("future"))
    }
    async fn doctor(
        &self,
        _: Request<pb::DoctorRequest>,
    ) -> Result<Response<pb::DoctorReply>, Status> {
        Err(Status::unimplemented("future"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_of_another_protocol_is_reported_clearly() {
    let env = TestEnv::new();
    let socket = env.root.path().join("future.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(broker_server::BrokerServer::new(FutureDaemon))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let mut cmd = env.command("mcpauthctl");
    cmd.arg("--socket").arg(&socket).arg("status");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("protocol mismatch"), "{stderr}");
    assert!(
        stderr.contains(&format!("protocol {}", mcpauth_proto::PROTOCOL))
            && stderr.contains("9.0.0 speaks 999"),
        "{stderr}"
    );
    assert!(
        stderr.contains("mcpauthctl stop"),
        "the next step: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_refuses_a_client_of_another_protocol() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon();
    let mut raw = raw_client(&env).await;
    let mut request = Request::new(pb::ListServersRequest {});
    request
        .metadata_mut()
        .insert(mcpauth_proto::PROTOCOL_METADATA, "999".parse().unwrap());
    let err = raw.list_servers(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("protocol mismatch"),
        "{}",
        err.message()
    );
    // What to do travels as data, not as the CLI's words.
    assert!(!err.message().contains("mcpauthctl"), "{}", err.message());
    assert_eq!(
        next_step(&err).map(|s| s.kind()),
        Some(pb::next_step::Kind::StopDaemon)
    );
    // Status is always answered, whatever the client speaks.
    let mut request = Request::new(pb::StatusRequest {});
    request
        .metadata_mut()
        .insert(mcpauth_proto::PROTOCOL_METADATA, "999".parse().unwrap());
    assert_eq!(
        raw.status(request).await.unwrap().into_inner().protocol,
        mcpauth_proto::PROTOCOL
    );
}

/// A gRPC client of the daemon's socket, with nothing of the CLI's.
async fn raw_client(env: &TestEnv) -> pb::broker_client::BrokerClient<tonic::transport::Channel> {
    use hyper_util::rt::TokioIo;
    let path = env.socket();
    let channel = tonic::transport::Endpoint::from_static("http://mcpauthd.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .unwrap();
    pb::broker_client::BrokerClient::new(channel)
}

/// `message` as a client of this protocol sends it.
fn speaking<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        mcpauth_proto::PROTOCOL_METADATA,
        mcpauth_proto::PROTOCOL.to_string().parse().unwrap(),
    );
    request
}

/// The next step of an error, decoded from the status details.
fn next_step(status: &Status) -> Option<pb::NextStep> {
    use prost::Message;
    pb::ErrorDetail::decode(status.details()).ok()?.next_step
}

/// A failed call says what went wrong in the daemon's words and what to
/// do next as data (`ErrorDetail` in the status details), which any gRPC
/// client can read and the CLI words once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_carries_its_next_step_as_data() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon();
    env.ctl(&["add", "s", "https://s.example/mcp"]).ok();
    let mut raw = raw_client(&env).await;
    let err = raw
        .get_token(speaking(pb::GetTokenRequest {
            server: "s".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message().starts_with("login required for s: ")
            && !err.message().contains("mcpauthctl"),
        "{}",
        err.message()
    );
    let step = next_step(&err).expect("a next step");
    assert_eq!(
        (step.kind(), step.server.as_str()),
        (pb::next_step::Kind::Login, "s")
    );
    let err = raw
        .add_server(speaking(pb::AddServerRequest {
            name: "s".into(),
            url: "https://other.example/mcp".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    let step = next_step(&err).expect("a next step");
    assert_eq!(
        (step.kind(), step.server.as_str()),
        (pb::next_step::Kind::ShowOrRemove, "s")
    );
    // An error without one carries none.
    let err = raw
        .get_token(speaking(pb::GetTokenRequest {
            server: "nope".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(next_step(&err), None);
    // The CLI words it, once.
    let out = env.ctl(&["token", "s"]);
    assert_eq!(out.code(), 4);
    assert_eq!(
        out.stderr().matches("run `mcpauthctl login s`").count(),
        1,
        "{}",
        out.stderr()
    );
}

/// `service uninstall` with nothing installed says so in one line, and
/// asks no service manager (in a container, systemctl would only say
/// "Failed to connect to bus").
#[test]
fn service_uninstall_with_nothing_installed_says_so_in_one_line() {
    let env = TestEnv::new();
    let no_manager = env.path_with_systemctl(false);
    let out = env.ctl_env(&["service", "uninstall"], &[("PATH", &no_manager)]);
    let stdout = out.ok();
    assert_eq!(stdout.trim().lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with(&format!(
            "no mcpauthd service is installed (nothing in {}); nothing to uninstall",
            env.config_home().join("systemd/user").display()
        )),
        "{stdout}"
    );
    assert!(out.stderr().is_empty(), "{}", out.stderr());
    assert!(!stdout.contains("Failed to connect"), "{stdout}");
}

/// `--help` names the config file in use: under `XDG_CONFIG_HOME` when
/// that is set, not the default.
#[test]
fn help_names_the_config_file_in_use() {
    let env = TestEnv::new();
    let stdout = env.ctl(&["--help"]).ok();
    let flat = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains(&format!(
            "The servers are declared in {},",
            env.config_path().display()
        )),
        "{stdout}"
    );
    assert!(!flat.contains("~/.config/mcpauth"), "{stdout}");
}
