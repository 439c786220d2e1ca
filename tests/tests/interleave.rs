//! Randomized interleavings of everything that writes a server's state.
//!
//! Three servers, three test authorization servers that rotate refresh
//! tokens and answer after random delays. Every step runs up to three
//! operations at once, chosen at random: config edits (a URL change, a
//! removal, a re-add), logins, forced refreshes, `GetToken`s, reports of a
//! rejected token, and token-file imports that claim the issuer of an
//! authorization server that no server belongs to; the scheduler refreshes short-lived tokens meanwhile. Now and
//! then the broker is restarted on the same store.
//!
//! After every step:
//! - no server holds, or hands out, a grant from an issuer other than the
//!   one its configured URL belongs to;
//! - generations only grow (per server, until it is removed);
//! - no refresh token was ever used after its successor (the test ASes
//!   detect reuse);
//! - after a restart, every token acknowledged before it is still there,
//!   or a newer one.
//!
//! The seed is printed first; `MCP_BROKER_INTERLEAVE_SEED` replays a run and
//! `MCP_BROKER_INTERLEAVE_STEPS` makes it longer (default 3,000 steps).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mcpauth_tests::authserver::{AuthServer, Switches};
use mcpauthd::broker::Broker;
use mcpauthd::config::ServerName;
use mcpauthd::context::{BrokerOptions, Paths};
use mcpauthd::shutdown::Shutdown;
use mcpauthd::store::Store;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SERVERS: usize = 3;

struct World {
    dir: tempfile::TempDir,
    ases: Vec<AuthServer>,
    /// Which AS each server's URL belongs to; `None`: not configured.
    model: Vec<Option<usize>>,
    /// Highest generation seen per server since it was last (re)created.
    generations: Vec<u64>,
    /// The newest token acknowledged per server, with its generation.
    acknowledged: Vec<Option<(u64, String)>>,
}

impl World {
    fn paths(&self) -> Paths {
        Paths {
            socket: self.dir.path().join("unused.sock"),
            state_dir: self.dir.path().join("state"),
            config: self.dir.path().join("config.toml"),
        }
    }

    fn import_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("imports/s{i}.json"))
    }

    fn config_text(&self) -> String {
        let mut text = String::new();
        for (i, configured) in self.model.iter().enumerate() {
            if let Some(a) = configured {
                text.push_str(&format!(
                    "[servers.s{i}]\nurl = \"{}\"\nimport = {{ path = \"{}\", format = \"generic\" }}\n\n",
                    self.ases[*a].mcp_url,
                    self.import_path(i).display()
                ));
            }
        }
        text
    }

    fn as_of_issuer(&self, issuer: &str) -> Option<usize> {
        self.ases.iter().position(|a| a.issuer == issuer)
    }
}

async fn start_broker(world: &World) -> (Arc<Broker>, Shutdown) {
    let paths = world.paths();
    let store = Store::open_waiting(&paths.state_dir, Duration::from_secs(20)).expect("store");
    // The same store key at every restart, as the daemon finds its own.
    store.set_key(mcpauthd::seal::StoreKey::from_bytes(&[9; 32]).unwrap());
    let shutdown = Shutdown::new();
    let broker = Broker::start(
        paths,
        store,
        false,
        shutdown.clone(),
        BrokerOptions::default(),
    )
    .await
    .expect("broker starts");
    broker.start_scheduler();
    broker.start_token_files();
    (broker, shutdown)
}

async fn stop_broker(broker: Arc<Broker>, shutdown: Shutdown) {
    shutdown.trigger();
    // Tasks let go of it once they see the signal.
    let weak = Arc::downgrade(&broker);
    drop(broker);
    for _ in 0..500 {
        if weak.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the broker is still referenced 5 s after shutdown");
}

/// A whole browser login: start, follow the authorization URL (the test AS
/// consents and redirects to the loopback callback), wait for the outcome.
async fn login(broker: Arc<Broker>, name: String) -> Result<(), String> {
    let mut handle = broker
        .login(&name, vec![])
        .await
        .map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(10))
        .build()
        .unwrap();
    let _ = client.get(&handle.flow.authorization_url).send().await;
    let outcome = tokio::time::timeout(
        Duration::from_secs(20),
        handle.outcome.wait_for(Option::is_some),
    )
    .await
    .map_err(|_| "login timed out".to_string())?
    .map_err(|e| e.to_string())?
    .clone();
    match outcome {
        Some(mcpauthd::login::LoginOutcome::Success { .. }) => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Edit,
    Login,
    Refresh,
    Token,
    Report,
    Import,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_interleavings_keep_every_invariant() {
    let seed: u64 = std::env::var("MCP_BROKER_INTERLEAVE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let steps: usize = std::env::var("MCP_BROKER_INTERLEAVE_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    println!(
        "interleave seed {seed} ({steps} steps); replay with MCP_BROKER_INTERLEAVE_SEED={seed}"
    );
    let mut rng = StdRng::seed_from_u64(seed);

    let mut ases = Vec::new();
    // The last one is never configured: token files claim its issuer.
    for i in 0..=SERVERS {
        ases.push(
            AuthServer::start(Switches {
                rotate: true,
                // One AS issues short tokens, so the scheduler refreshes too.
                expires_in: Some(if i == 0 { 4 } else { 3600 }),
                ..Default::default()
            })
            .await,
        );
    }
    let mut world = World {
        dir: tempfile::tempdir().unwrap(),
        ases,
        model: (0..SERVERS).map(Some).collect(),
        generations: vec![0; SERVERS],
        acknowledged: vec![None; SERVERS],
    };
    std::fs::create_dir_all(world.dir.path().join("imports")).unwrap();
    std::fs::write(world.paths().config, world.config_text()).unwrap();
    let (mut broker, mut shutdown) = start_broker(&world).await;
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    // The last steps, for the failure message.
    let mut history: std::collections::VecDeque<String> = Default::default();

    for step in 0..steps {
        for a in &world.ases {
            let delay = if rng.random_bool(0.3) {
                rng.random_range(0..30)
            } else {
                0
            };
            a.set(|s| s.token_delay_ms = delay);
        }
        // Restart now and then; everything acknowledged must survive.
        if step > 0 && step % 250 == 0 {
            stop_broker(broker, shutdown).await;
            (broker, shutdown) = start_broker(&world).await;
            *counts.entry("restart").or_default() += 1;
            for i in 0..SERVERS {
                let Some((generation, token)) = world.acknowledged[i].clone() else {
                    continue;
                };
                let got = broker.get_token(&format!("s{i}"), Duration::ZERO).await;
                match got {
                    Ok(g) => assert!(
                        g.generation >= generation,
                        "seed {seed} step {step}: s{i} lost generation {generation} ({token:.6}…) across a restart: now {}",
                        g.generation
                    ),
                    Err(e) => {
                        panic!("seed {seed} step {step}: s{i} lost its grant across a restart: {e}")
                    }
                }
            }
        }

        let n_ops = rng.random_range(1..=3);
        let mut tasks = Vec::new();
        let mut described = format!("step {step}:");
        let mut edited = false;
        for _ in 0..n_ops {
            let i = rng.random_range(0..SERVERS);
            let name = format!("s{i}");
            let op = match rng.random_range(0..100) {
                0..10 => Op::Edit,
                10..30 => Op::Login,
                30..50 => Op::Refresh,
                50..75 => Op::Token,
                75..90 => Op::Report,
                _ => Op::Import,
            };
            *counts
                .entry(match op {
                    Op::Edit => "edit",
                    Op::Login => "login",
                    Op::Refresh => "refresh",
                    Op::Token => "token",
                    Op::Report => "report",
                    Op::Import => "import",
                })
                .or_default() += 1;
            let b = broker.clone();
            described.push_str(&format!(" {op:?}(s{i})"));
            match op {
                Op::Edit if !edited => {
                    edited = true;
                    world.model[i] = match world.model[i] {
                        Some(a) if rng.random_bool(0.5) => {
                            Some((a + rng.random_range(1..SERVERS)) % SERVERS)
                        }
                        Some(_) => None,
                        None => Some(rng.random_range(0..SERVERS)),
                    };
                    if world.model[i].is_none() {
                        world.generations[i] = 0;
                    }
                    world.acknowledged[i] = None;
                    described.push_str(&format!("->{:?}", world.model[i]));
                    std::fs::write(world.paths().config, world.config_text()).unwrap();
                    tasks.push(tokio::spawn(async move {
                        b.config_editor()
                            .reload()
                            .await
                            .map_err(|e| e.to_string())
                            .map(|_| None)
                    }));
                }
                Op::Edit => {}
                Op::Login => tasks.push(tokio::spawn(async move {
                    let _ = login(b, name).await;
                    Ok(None)
                })),
                Op::Refresh => tasks.push(tokio::spawn(async move {
                    Ok(b.refresh(&name).await.ok().map(|g| (i, g)))
                })),
                Op::Token => {
                    let ttl = Duration::from_secs(rng.random_range(0..120));
                    tasks.push(tokio::spawn(async move {
                        Ok(b.get_token(&name, ttl).await.ok().map(|g| (i, g)))
                    }))
                }
                Op::Report => tasks.push(tokio::spawn(async move {
                    let Ok(held) = b.get_token(&name, Duration::ZERO).await else {
                        return Ok(None);
                    };
                    let fp = mcpauthd::oauth::pkce::fingerprint(held.access_token.expose());
                    Ok(b.report_unauthorized(&name, &fp, 401, "Bearer")
                        .await
                        .ok()
                        .map(|g| (i, g)))
                })),
                Op::Import => {
                    // A token file that claims the issuer of an AS no server
                    // belongs to: never adopted.
                    let wrong = SERVERS;
                    let body = serde_json::json!({
                        "access_token": format!("forged-{step}"),
                        "refresh_token": format!("forged-rt-{step}"),
                        "expires_at": mcpauth_tests::now_ms() / 1000 + 7200,
                        "issuer": world.ases[wrong].issuer,
                        "client_id": "someone-else",
                    });
                    let path = world.import_path(i);
                    std::fs::write(&path, body.to_string()).unwrap();
                }
            }
        }
        if history.len() == 30 {
            history.pop_front();
        }
        history.push_back(described);
        let recent = || history.iter().cloned().collect::<Vec<_>>().join("\n");
        for task in tasks {
            let result = tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .unwrap_or_else(|_| panic!("seed {seed} step {step}: an operation hung"))
                .unwrap();
            if let Ok(Some((i, grant))) = result {
                // Acknowledged to a client: it must have come from the
                // server's own AS, as configured when it was handed out.
                let from = world.as_of_issuer(&grant.issuer);
                assert!(from.is_some(), "seed {seed} step {step}: unknown issuer");
                if world.model[i] == from && world.generations[i] <= grant.generation {
                    let newer = world.acknowledged[i]
                        .as_ref()
                        .is_none_or(|(g, _)| *g <= grant.generation);
                    if newer {
                        world.acknowledged[i] =
                            Some((grant.generation, grant.access_token.expose().to_string()));
                    }
                }
            }
        }
        // Let the import watcher see the files of this step.
        if rng.random_bool(0.05) {
            tokio::time::sleep(Duration::from_millis(40)).await;
        }

        // The invariants.
        for (a, server) in world.ases.iter().enumerate() {
            assert!(
                !server.reuse_detected(),
                "seed {seed} step {step}: a refresh token of AS {a} was used after its successor"
            );
        }
        for i in 0..SERVERS {
            let name = ServerName::parse(&format!("s{i}")).unwrap();
            let held = broker.store().grant(&name).unwrap();
            match (world.model[i], held) {
                (None, Some(g)) => panic!(
                    "seed {seed} step {step}: removed s{i} still holds generation {}",
                    g.generation
                ),
                (Some(a), Some(g)) => {
                    assert_eq!(
                        g.issuer,
                        world.ases[a].issuer,
                        "seed {seed} step {step}: s{i} holds a grant (generation {}) from another server's AS (AS {:?}, expected {a}); recent steps:\n{}",
                        g.generation,
                        world.as_of_issuer(&g.issuer),
                        recent()
                    );
                    assert!(
                        !g.access_token.expose().starts_with("forged-"),
                        "seed {seed} step {step}: s{i} adopted a forged token"
                    );
                    assert!(
                        g.generation >= world.generations[i],
                        "seed {seed} step {step}: s{i} went from generation {} to {}",
                        world.generations[i],
                        g.generation
                    );
                    world.generations[i] = g.generation;
                    // What it hands out is its own AS's.
                    if let Ok(t) = broker.get_token(&format!("s{i}"), Duration::ZERO).await {
                        assert_eq!(t.issuer, world.ases[a].issuer, "seed {seed} step {step}");
                    }
                }
                _ => {}
            }
        }
    }
    stop_broker(broker, shutdown).await;
    let refreshes: usize = world
        .ases
        .iter()
        .map(|a| a.token_requests("refresh_token").len())
        .sum();
    println!("interleave: {steps} steps, {counts:?}, {refreshes} refresh requests at the ASes");
    assert!(counts.get("restart").copied().unwrap_or(0) >= steps / 250 - 1);
    assert!(refreshes > 0, "the run refreshed nothing");
}
