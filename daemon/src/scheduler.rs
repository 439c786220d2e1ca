//! Proactive refresh: tokens are refreshed before anyone needs a new one.
//!
//! Policy ([`refresh_at`]): at 75 % of the token's lifetime or 5 minutes
//! before it expires, whichever is earlier, minus up to 5 % of the lifetime
//! of random jitter (so many servers, or many machines, do not refresh in
//! lockstep). The 5-minute lead is capped at half the lifetime: a token
//! that lives 4 minutes is refreshed after 2, not at once (which, for
//! every new token, would be a refresh loop).
//!
//! A failed refresh (by the scheduler, a client or a person) leaves one
//! failure state, the broker's [`Backoff`] for that grant: consecutive
//! failures and the time before which no request is sent ([`backoff`],
//! doubling and capped, or the AS's `Retry-After`). The scheduler keeps no
//! count of its own: its next attempt is the later of its plan and the
//! backoff's retry time, so what `status` shows is what will happen.
//! "Login required" stops it until a new token arrives.
//!
//! The scheduler does not refresh by itself: it asks its [`Target`] (the
//! broker, whose `refresh_grant` is the one place that refreshes), and it
//! waits on an injectable [`Clock`] with tokio timers, so tests run it on a
//! paused clock with a fake target.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::config::ServerName;

/// Refresh no later than this long before expiry.
pub const LEAD_MS: i64 = 5 * 60 * 1000;
/// First retry delay after a failure; doubles up to [`MAX_BACKOFF_MS`].
pub const FIRST_BACKOFF_MS: i64 = 5_000;
pub const MAX_BACKOFF_MS: i64 = 5 * 60 * 1000;

/// When to refresh a token obtained at `obtained_ms` that expires at
/// `expires_ms`. `jitter` in `[0, 1)` moves it earlier by up to 5 % of the
/// lifetime.
pub fn refresh_at(obtained_ms: i64, expires_ms: i64, jitter: f64) -> i64 {
    let lifetime = (expires_ms - obtained_ms).max(0);
    let at_three_quarters = obtained_ms + lifetime * 3 / 4;
    let before_expiry = expires_ms - LEAD_MS.min(lifetime / 2);
    let target = at_three_quarters.min(before_expiry);
    let jitter_ms = (lifetime as f64 * 0.05 * jitter.clamp(0.0, 1.0)) as i64;
    (target - jitter_ms).max(obtained_ms)
}

/// The delay before retry number `attempt` (1-based), capped, with up to
/// 20 % jitter subtracted.
pub fn backoff(attempt: u32, jitter: f64) -> i64 {
    let exp = FIRST_BACKOFF_MS.saturating_mul(1i64 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(MAX_BACKOFF_MS);
    capped - (capped as f64 * 0.2 * jitter.clamp(0.0, 1.0)) as i64
}

/// A grant whose last refresh failed for a reason that may pass: the one
/// failure state of a server (kept by the broker, read by the scheduler).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The grant generation that failed to refresh: a new grant (a login,
    /// an import) ends the backoff.
    pub generation: u64,
    /// Consecutive failures.
    pub failures: u32,
    /// No request before this (Unix ms).
    pub retry_at_ms: i64,
    pub reason: String,
}

impl Backoff {
    /// Whole seconds from `now` until the retry time, at least 1.
    pub fn retry_after_secs(&self, now: i64) -> u64 {
        ((self.retry_at_ms - now + 999) / 1000).max(1) as u64
    }
}

/// What the scheduler needs to know about a grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantTiming {
    pub generation: u64,
    pub obtained_ms: i64,
    /// `None`: unknown expiry (never refreshed proactively).
    pub expires_ms: Option<i64>,
    pub refreshable: bool,
    /// The failure state of this generation, if its refresh failed.
    pub backoff: Option<Backoff>,
}

/// How a refresh the scheduler asked for went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshResult {
    Refreshed,
    /// A person must log in; stop until a new token arrives.
    LoginRequired(String),
    /// Try again later: when the grant's [`Backoff`] says.
    Failed {
        error: String,
    },
}

pub type RefreshFuture = Pin<Box<dyn Future<Output = RefreshResult> + Send>>;

/// What the scheduler schedules for.
pub trait Target: Send + Sync + 'static {
    /// Every server that holds a grant, with its timing.
    fn grants(&self) -> Vec<(ServerName, GrantTiming)>;
    /// Refreshes `name` unless its grant is no longer `generation`.
    fn refresh(&self, name: ServerName, generation: u64) -> RefreshFuture;
}

/// The scheduler's view of one server, shown by `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to do: no refresh token, or the expiry is unknown.
    Idle,
    Scheduled {
        at_ms: i64,
    },
    Retrying {
        at_ms: i64,
        attempt: u32,
        error: String,
    },
    /// Stopped until a new token arrives.
    Stopped {
        reason: String,
    },
}

#[derive(Clone, Debug)]
struct Entry {
    timing: GrantTiming,
    /// The proactive refresh time of this generation (jitter included).
    due_ms: Option<i64>,
    /// Set when a refresh said "login required".
    stopped: Option<String>,
    /// After a failed attempt, no other before this: a floor that keeps
    /// the loop from spinning should a failure leave no backoff.
    floor_ms: i64,
}

impl Entry {
    fn new(timing: GrantTiming) -> Self {
        let due_ms = match (timing.refreshable, timing.expires_ms) {
            (true, Some(expires)) => Some(refresh_at(
                timing.obtained_ms,
                expires,
                rand::random::<f64>(),
            )),
            _ => None,
        };
        Self {
            timing,
            due_ms,
            stopped: None,
            floor_ms: 0,
        }
    }

    fn plan(&self) -> Plan {
        if let Some(reason) = &self.stopped {
            return Plan::Stopped {
                reason: reason.clone(),
            };
        }
        let Some(due) = self.due_ms else {
            return Plan::Idle;
        };
        match &self.timing.backoff {
            // The plan was reached and failed: the next attempt is the
            // backoff's.
            Some(b) if b.retry_at_ms > due => Plan::Retrying {
                at_ms: b.retry_at_ms.max(self.floor_ms),
                attempt: b.failures,
                error: b.reason.clone(),
            },
            // A failure before the plan (a person's refresh, a client's):
            // the plan stands.
            _ => Plan::Scheduled {
                at_ms: due.max(self.floor_ms),
            },
        }
    }
}

pub struct Scheduler {
    clock: Arc<dyn Clock>,
    entries: Mutex<HashMap<ServerName, Entry>>,
    wake: Notify,
}

impl Scheduler {
    pub fn new(clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self {
            clock,
            entries: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        })
    }

    /// Re-plans now (a new token, a removed server, a config change).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The plan for `name`, given its grant as it is now (so a failure
    /// recorded since the last re-plan shows at once).
    pub fn plan(&self, name: &ServerName, timing: Option<GrantTiming>) -> Plan {
        let entries = self.entries.lock().unwrap();
        let Some(timing) = timing else {
            return Plan::Idle;
        };
        match entries.get(name) {
            Some(entry) if entry.timing.generation == timing.generation => Entry {
                timing,
                ..entry.clone()
            }
            .plan(),
            _ => Entry::new(timing).plan(),
        }
    }

    /// Brings the plans in line with the grants held.
    fn replan(&self, grants: Vec<(ServerName, GrantTiming)>) {
        let mut entries = self.entries.lock().unwrap();
        entries.retain(|name, _| grants.iter().any(|(n, _)| n == name));
        for (name, timing) in grants {
            match entries.get_mut(&name) {
                Some(entry) if entry.timing.generation == timing.generation => {
                    entry.timing = timing;
                }
                _ => {
                    entries.insert(name, Entry::new(timing));
                }
            }
        }
    }

    fn next_due(&self) -> Option<i64> {
        self.entries
            .lock()
            .unwrap()
            .values()
            .filter_map(|e| match e.plan() {
                Plan::Scheduled { at_ms } | Plan::Retrying { at_ms, .. } => Some(at_ms),
                _ => None,
            })
            .min()
    }

    fn due(&self, now: i64) -> Vec<(ServerName, u64, u32)> {
        self.entries
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(name, e)| match e.plan() {
                Plan::Scheduled { at_ms } if at_ms <= now => {
                    Some((name.clone(), e.timing.generation, 0))
                }
                Plan::Retrying { at_ms, attempt, .. } if at_ms <= now => {
                    Some((name.clone(), e.timing.generation, attempt))
                }
                _ => None,
            })
            .collect()
    }

    fn record(&self, name: &ServerName, generation: u64, result: RefreshResult) {
        let now = self.clock.now_ms();
        let mut entries = self.entries.lock().unwrap();
        let Some(entry) = entries.get_mut(name) else {
            return;
        };
        if entry.timing.generation != generation {
            // A new token arrived meanwhile; its plan stands.
            return;
        }
        match result {
            RefreshResult::LoginRequired(reason) => entry.stopped = Some(reason),
            RefreshResult::Failed { .. } => entry.floor_ms = now + FIRST_BACKOFF_MS,
            RefreshResult::Refreshed => {}
        }
        // Refreshed: the next replan sees the new generation. Failed: the
        // next replan sees the backoff.
    }

    /// Runs until `stop` resolves.
    pub async fn run(
        self: Arc<Self>,
        target: Arc<dyn Target>,
        stop: impl Future<Output = ()> + Send,
    ) {
        tokio::pin!(stop);
        loop {
            self.replan(target.grants());
            let now = self.clock.now_ms();
            for (name, generation, attempt) in self.due(now) {
                debug!(server = %name, attempt, "proactive refresh");
                let result = target.refresh(name.clone(), generation).await;
                match &result {
                    RefreshResult::Refreshed => info!(server = %name, "refreshed ahead of expiry"),
                    RefreshResult::LoginRequired(reason) => {
                        warn!(server = %name, %reason, "proactive refresh stopped: login required")
                    }
                    RefreshResult::Failed { error } => {
                        warn!(server = %name, %error, attempt = attempt + 1, "proactive refresh failed; will retry")
                    }
                }
                self.record(&name, generation, result);
            }
            self.replan(target.grants());
            let sleep = match self.next_due() {
                Some(at) => Duration::from_millis((at - self.clock.now_ms()).max(0) as u64),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = &mut stop => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const HOUR: i64 = 3_600_000;

    #[test]
    fn policy_three_quarters_or_five_minutes_before() {
        // One hour: 75 % is 45 min, 5 min before is 55 min: 45 min wins.
        assert_eq!(refresh_at(0, HOUR, 0.0), 45 * 60_000);
        // Ten hours: 7.5 h vs 9 h 55: 7.5 h.
        assert_eq!(refresh_at(0, 10 * HOUR, 0.0), 10 * HOUR * 3 / 4);
        // Ten minutes: 7.5 min vs 5 min: 5 min wins.
        assert_eq!(refresh_at(0, 600_000, 0.0), 300_000);
        // Four minutes: the lead is capped at half the lifetime.
        assert_eq!(refresh_at(1000, 241_000, 0.0), 121_000);
        // Expired already: at once, never before it was obtained.
        assert_eq!(refresh_at(1000, 1000, 0.0), 1000);
        // Jitter moves it earlier by at most 5 % of the lifetime.
        let j = refresh_at(0, HOUR, 0.999);
        assert!((45 * 60_000 - HOUR / 20..45 * 60_000).contains(&j), "{j}");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1, 0.0), 5_000);
        assert_eq!(backoff(2, 0.0), 10_000);
        assert_eq!(backoff(3, 0.0), 20_000);
        assert_eq!(backoff(10, 0.0), MAX_BACKOFF_MS);
        assert_eq!(backoff(u32::MAX, 0.0), MAX_BACKOFF_MS);
        assert!(backoff(2, 0.99) >= 8_000);
    }

    /// What the fake AS does on the next refresh.
    #[derive(Clone, Debug, PartialEq)]
    enum Next {
        Refresh,
        /// Fails; the AS asks for this many seconds, if any.
        Fail(Option<u64>),
        LoginRequired(&'static str),
    }

    /// A fake server: a grant per generation, scripted refresh results,
    /// and the broker's backoff rule for failures.
    struct Fake {
        clock: Arc<TokioClock>,
        lifetime_ms: i64,
        state: Mutex<(u64, i64, Option<Backoff>)>,
        script: Mutex<Vec<Next>>,
        calls: Mutex<Vec<i64>>,
        refreshes: AtomicUsize,
    }

    impl Target for Fake {
        fn grants(&self) -> Vec<(ServerName, GrantTiming)> {
            let (generation, obtained, backoff) = self.state.lock().unwrap().clone();
            vec![(
                ServerName::parse("s").unwrap(),
                GrantTiming {
                    generation,
                    obtained_ms: obtained,
                    expires_ms: Some(obtained + self.lifetime_ms),
                    refreshable: true,
                    backoff,
                },
            )]
        }
        fn refresh(&self, _name: ServerName, generation: u64) -> RefreshFuture {
            let now = self.clock.now_ms();
            self.calls.lock().unwrap().push(now);
            let next = {
                let mut script = self.script.lock().unwrap();
                if script.is_empty() {
                    Next::Refresh
                } else {
                    script.remove(0)
                }
            };
            let mut s = self.state.lock().unwrap();
            assert_eq!(s.0, generation);
            let result = match next {
                Next::Refresh => {
                    *s = (generation + 1, now, None);
                    self.refreshes.fetch_add(1, Ordering::SeqCst);
                    RefreshResult::Refreshed
                }
                Next::Fail(asked) => {
                    let failures = s.2.as_ref().map_or(0, |b| b.failures) + 1;
                    s.2 = Some(Backoff {
                        generation,
                        failures,
                        retry_at_ms: now + crate::backoff::backoff_ms(failures, asked),
                        reason: "AS down".into(),
                    });
                    RefreshResult::Failed {
                        error: "AS down".into(),
                    }
                }
                Next::LoginRequired(reason) => RefreshResult::LoginRequired(reason.into()),
            };
            Box::pin(async move { result })
        }
    }

    fn fake(clock: &Arc<TokioClock>, lifetime_ms: i64, script: Vec<Next>) -> Arc<Fake> {
        Arc::new(Fake {
            clock: clock.clone(),
            lifetime_ms,
            state: Mutex::new((1, clock.now_ms(), None)),
            script: Mutex::new(script),
            calls: Mutex::new(Vec::new()),
            refreshes: AtomicUsize::new(0),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_before_expiry_on_a_paused_clock() {
        let clock = TokioClock::starting_at(1_000_000_000);
        let target = fake(&clock, HOUR, vec![]);
        let scheduler = Scheduler::new(clock.clone());
        let stop = crate::shutdown::Shutdown::new();
        let task = tokio::spawn(scheduler.clone().run(target.clone(), stop.wait()));
        // Three hours of virtual time: about one refresh per 45 minutes.
        tokio::time::sleep(Duration::from_secs(3 * 3600)).await;
        stop.trigger();
        task.await.unwrap();
        let calls = target.calls.lock().unwrap().clone();
        assert!((3..=5).contains(&calls.len()), "{calls:?}");
        let mut previous = 1_000_000_000;
        for at in calls {
            let since = at - previous;
            // Never later than 75 % of the lifetime, never earlier than 70 %.
            assert!(
                (42 * 60_000..=45 * 60_000 + 1000).contains(&since),
                "{since}"
            );
            previous = at;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_and_login_required_stops() {
        let clock = TokioClock::starting_at(0);
        let target = fake(
            &clock,
            10 * 60_000,
            vec![
                Next::Fail(None),
                Next::Fail(None),
                Next::Fail(None),
                Next::LoginRequired("invalid_grant"),
            ],
        );
        let scheduler = Scheduler::new(clock.clone());
        let stop = crate::shutdown::Shutdown::new();
        let task = tokio::spawn(scheduler.clone().run(target.clone(), stop.wait()));
        tokio::time::sleep(Duration::from_secs(5 * 60 + 1)).await;
        // First attempt by 5 min (10 min token, up to 30 s of jitter), then retrying.
        assert!(
            matches!(
                scheduler.plan(
                    &ServerName::parse("s").unwrap(),
                    target.grants().pop().map(|g| g.1)
                ),
                Plan::Retrying { .. }
            ),
            "{:?}",
            scheduler.plan(
                &ServerName::parse("s").unwrap(),
                target.grants().pop().map(|g| g.1)
            )
        );
        tokio::time::sleep(Duration::from_secs(3600)).await;
        stop.trigger();
        task.await.unwrap();
        let calls = target.calls.lock().unwrap().clone();
        assert_eq!(
            calls.len(),
            4,
            "three failures, then login required, then nothing: {calls:?}"
        );
        let gaps: Vec<i64> = calls.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps, vec![5_000, 10_000, 20_000], "the backoff's times");
        assert_eq!(
            scheduler.plan(
                &ServerName::parse("s").unwrap(),
                target.grants().pop().map(|g| g.1)
            ),
            Plan::Stopped {
                reason: "invalid_grant".into()
            }
        );
        assert_eq!(target.refreshes.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_from_the_server_is_waited_out() {
        let clock = TokioClock::starting_at(0);
        let target = fake(
            &clock,
            10 * 60_000,
            vec![Next::Fail(Some(120)), Next::LoginRequired("invalid_grant")],
        );
        let scheduler = Scheduler::new(clock.clone());
        let stop = crate::shutdown::Shutdown::new();
        let task = tokio::spawn(scheduler.clone().run(target.clone(), stop.wait()));
        tokio::time::sleep(Duration::from_secs(3600)).await;
        stop.trigger();
        task.await.unwrap();
        let calls = target.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert!(
            calls[1] - calls[0] >= 120_000,
            "the retry waited for the server's 120 s, not our 5 s: {calls:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_token_from_elsewhere_replans_without_a_refresh() {
        let clock = TokioClock::starting_at(0);
        let target = fake(&clock, HOUR, vec![]);
        let scheduler = Scheduler::new(clock.clone());
        let stop = crate::shutdown::Shutdown::new();
        let task = tokio::spawn(scheduler.clone().run(target.clone(), stop.wait()));
        tokio::time::sleep(Duration::from_secs(30 * 60)).await;
        // A login (or an import) brings a new token at 30 min.
        *target.state.lock().unwrap() = (7, clock.now_ms(), None);
        scheduler.wake();
        tokio::time::sleep(Duration::from_secs(30 * 60)).await;
        // The old plan (45 min) was dropped; the new one is due at ~75 min.
        assert!(target.calls.lock().unwrap().is_empty());
        tokio::time::sleep(Duration::from_secs(20 * 60)).await;
        stop.trigger();
        task.await.unwrap();
        assert_eq!(target.calls.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_failure_before_the_plan_leaves_the_plan_and_one_after_it_retries() {
        let clock = TokioClock::starting_at(0);
        let scheduler = Scheduler::new(clock);
        let name = ServerName::parse("s").unwrap();
        let timing = |backoff: Option<Backoff>| GrantTiming {
            generation: 1,
            obtained_ms: 0,
            expires_ms: Some(HOUR),
            refreshable: true,
            backoff,
        };
        scheduler.replan(vec![(name.clone(), timing(None))]);
        let Plan::Scheduled { at_ms: due } = scheduler.plan(&name, Some(timing(None))) else {
            panic!("scheduled")
        };
        // A person's refresh failed at minute 1: retry allowed after 5 s,
        // but nothing will retry before the plan, and status says so.
        let early = Backoff {
            generation: 1,
            failures: 1,
            retry_at_ms: 65_000,
            reason: "AS down".into(),
        };
        assert_eq!(
            scheduler.plan(&name, Some(timing(Some(early)))),
            Plan::Scheduled { at_ms: due }
        );
        // The planned attempt itself failed: the backoff's time is next.
        let late = Backoff {
            generation: 1,
            failures: 2,
            retry_at_ms: due + 10_000,
            reason: "AS down".into(),
        };
        assert_eq!(
            scheduler.plan(&name, Some(timing(Some(late)))),
            Plan::Retrying {
                at_ms: due + 10_000,
                attempt: 2,
                error: "AS down".into()
            }
        );
    }
}
