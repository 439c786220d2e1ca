//! The "browser" of the end-to-end tests, run through `$BROWSER`.
//!
//! `test-browser URL` appends the URL to `$TEST_BROWSER_LOG` (if set), then
//! by `$TEST_BROWSER_MODE`:
//! - `follow` (default): GETs the URL and follows every redirect, as a
//!   browser whose user approves at once;
//! - `ignore`: does nothing more (a person who never comes back);
//! - `tamper-state`: follows the authorization redirect by hand but
//!   replaces `state` before calling the callback (a forged redirect).

use std::io::Write;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = std::env::args().next_back().expect("a URL");
    if let Some(log) = std::env::var_os("TEST_BROWSER_LOG") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        writeln!(f, "{url}").unwrap();
    }
    let mode = std::env::var("TEST_BROWSER_MODE").unwrap_or_else(|_| "follow".into());
    match mode.as_str() {
        "ignore" => {}
        "follow" => {
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::limited(10))
                .build()
                .unwrap();
            let _ = client
                .get(&url)
                .send()
                .await
                .and_then(|r| r.error_for_status());
        }
        "tamper-state" => {
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap();
            let response = client.get(&url).send().await.unwrap();
            let location = response.headers()["location"].to_str().unwrap().to_string();
            let mut callback = url::Url::parse(&location).unwrap();
            let pairs: Vec<(String, String)> = callback
                .query_pairs()
                .map(|(k, v)| {
                    let forged = k == "state";
                    (
                        k.into_owned(),
                        if forged {
                            "forged".into()
                        } else {
                            v.into_owned()
                        },
                    )
                })
                .collect();
            callback.query_pairs_mut().clear().extend_pairs(pairs);
            let _ = client.get(callback).send().await;
        }
        other => panic!("unknown TEST_BROWSER_MODE {other}"),
    }
}
