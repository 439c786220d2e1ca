//! A many-task client for the concurrency tests. Each process waits until
//! a shared start time (Unix ms) so processes really overlap, then runs
//! TASKS concurrent tasks and prints one result line per task.
//!
//! - `test-client broker SOCKET SERVER TOKEN TASKS START_MS`: each task
//!   reports TOKEN as rejected (401) through its own connection to the
//!   broker and prints the token it gets back (or `error: ...`), a tab,
//!   and when it got it (Unix µs).
//! - `test-client direct TOKEN_URL CLIENT_ID REFRESH_TOKEN RESOURCE TASKS START_MS`:
//!   each task refreshes on its own at the token endpoint, as clients do
//!   without a broker, and prints the HTTP status.

use std::time::Duration;

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

async fn wait_until(start_ms: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    if start_ms > now {
        tokio::time::sleep(Duration::from_millis((start_ms - now) as u64)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("broker") => {
            let (socket, server, token) = (args[1].clone(), args[2].clone(), args[3].clone());
            let tasks: usize = args[4].parse().unwrap();
            let start: i64 = args[5].parse().unwrap();
            let mut clients = Vec::new();
            for _ in 0..tasks {
                clients.push(
                    mcpauth_client::Client::connect(std::path::Path::new(&socket))
                        .await
                        .unwrap(),
                );
            }
            wait_until(start).await;
            // TOKEN "-" asks for the token instead of reporting one: the
            // same callers without a refresh to wait for (the baseline).
            let handles: Vec<_> = clients
                .into_iter()
                .map(|mut c| {
                    let (server, token) = (server.clone(), token.clone());
                    tokio::spawn(async move {
                        let reply = if token == "-" {
                            c.get_token(&server, Some(0)).await
                        } else {
                            c.report_unauthorized(
                                &server,
                                &token,
                                401,
                                "Bearer error=\"invalid_token\"",
                            )
                            .await
                        };
                        let result = match reply {
                            Ok(reply) => reply.access_token,
                            Err(e) => format!("error: {e}"),
                        };
                        // The token, then when this caller had it (Unix µs).
                        format!("{result}\t{}", now_us())
                    })
                })
                .collect();
            for h in handles {
                println!("{}", h.await.unwrap());
            }
        }
        Some("direct") => {
            let (url, client_id, refresh_token, resource) = (
                args[1].clone(),
                args[2].clone(),
                args[3].clone(),
                args[4].clone(),
            );
            let tasks: usize = args[5].parse().unwrap();
            let start: i64 = args[6].parse().unwrap();
            let http = reqwest::Client::new();
            wait_until(start).await;
            let handles: Vec<_> = (0..tasks)
                .map(|_| {
                    let http = http.clone();
                    let form = vec![
                        ("grant_type", "refresh_token".to_string()),
                        ("refresh_token", refresh_token.clone()),
                        ("client_id", client_id.clone()),
                        ("resource", resource.clone()),
                    ];
                    let url = url.clone();
                    tokio::spawn(async move {
                        match http.post(&url).form(&form).send().await {
                            Ok(r) => r.status().as_u16().to_string(),
                            Err(e) => format!("error: {e}"),
                        }
                    })
                })
                .collect();
            for h in handles {
                println!("{}", h.await.unwrap());
            }
        }
        _ => panic!("usage: test-client broker|direct ..."),
    }
}
