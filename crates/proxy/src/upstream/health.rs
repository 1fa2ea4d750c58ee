//! Target health: passive (outcomes of real requests eject a failing target for a while) and
//! active (a periodic GET marks a target unhealthy or healthy after thresholds of consecutive
//! results). Both only flip atomics that selection reads.
//!
//! Passive ejection is bounded, as a client can drive it (a path that makes every backend
//! answer 503, or time out): at most `passive_health.max_ejection_percent` of the targets
//! (rounded down, at least one) are ejected at once, and never the last eligible one — a
//! target that would be is kept in rotation and its count starts over. Only active checks can
//! take every target out.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::header::{HOST, HeaderValue, USER_AGENT};
use http::uri::PathAndQuery;
use http::{Request, Uri};
use http_body_util::{BodyExt, Limited};

use super::{Conns, UpstreamPool, UpstreamProtocol, Via, empty_body, send_via};

/// How much of a health-check response body is read. Reading it (rather than dropping it)
/// lets the connection go back to the pool; the bound keeps a chatty endpoint cheap.
const CHECK_BODY_LIMIT: usize = 64 * 1024;

/// The health-check tasks of a pool, and the sweep of its idle connections; dropping
/// this stops them. The tasks hold the pool only weakly, so they also end on their own once
/// the pool (its config snapshot) is gone.
pub struct HealthChecks {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    sweep: Option<tokio::task::JoinHandle<()>>,
}

impl HealthChecks {
    /// How many check tasks run (one per target; 0 without `health_check`).
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        for t in self.tasks.iter().chain(&self.sweep) {
            t.abort();
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl UpstreamPool {
    /// Eligible = actively healthy and not passively ejected. The first caller to see an
    /// ejection expire clears it and logs the recovery (so it is logged once, without a timer).
    pub(super) fn eligible(&self, i: usize, now: u64) -> bool {
        let t = &self.targets[i];
        if !t.healthy.load(Ordering::Relaxed) {
            return false;
        }
        let until = t.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if until > now {
            return false;
        }
        if t.ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::info!(upstream = %self.name, target = %t.authority, "target back in rotation after ejection");
        }
        true
    }

    /// A request to target `i` succeeded (any response but 502/503/504).
    pub(super) fn record_success(&self, i: usize) {
        let f = &self.targets[i].failures;
        // Skip the write in the common case: a shared cache line stays shared.
        if f.load(Ordering::Relaxed) != 0 {
            f.store(0, Ordering::Relaxed);
        }
    }

    /// A request to target `i` failed (connect error, timeout, a failed exchange, 502/503/504);
    /// ejects it at the threshold, within the bounds of [`eject`](Self::eject).
    pub(super) fn record_failure(&self, i: usize) {
        let threshold = self.passive.consecutive_failures;
        if threshold == 0 {
            return;
        }
        let t = &self.targets[i];
        let n = t.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if n < threshold {
            return;
        }
        // The count starts over: after the ejection (or a refusal to eject) the target gets
        // `threshold` more chances.
        t.failures.store(0, Ordering::Relaxed);
        let now = self.now_ms();
        let until = now.saturating_add(millis(self.passive.ejection_time));
        if until <= now {
            return; // ejection_time 0: counting without ejecting
        }
        if self.eject(i, until, now) {
            tracing::warn!(
                upstream = %self.name,
                target = %t.authority,
                failures = n,
                ejection = ?self.passive.ejection_time,
                "target ejected after consecutive failures"
            );
        }
    }

    /// Ejects target `i` until `until` (ms since the epoch), unless that would eject more than
    /// `max_ejection_percent` of the targets (rounded down, at least one) or leave no eligible
    /// target. True if the target was in rotation and is now out; a target already ejected
    /// only has its ejection extended.
    pub(super) fn eject(&self, i: usize, until: u64, now: u64) -> bool {
        let t = &self.targets[i];
        // One decision at a time: two targets failing together must not both pass the checks
        // below (ejections are rare; the request path never takes this lock otherwise).
        let _one = self
            .ejecting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if t.ejected_until.load(Ordering::Relaxed) > now {
            t.ejected_until.fetch_max(until, Ordering::Relaxed);
            return false;
        }
        let n = self.targets.len();
        let out = self
            .targets
            .iter()
            .filter(|o| o.ejected_until.load(Ordering::Relaxed) > now)
            .count();
        let pct = usize::try_from(self.max_ejection_percent.min(100)).unwrap_or(100);
        let cap = (n.saturating_mul(pct) / 100).max(1);
        if out >= cap {
            tracing::debug!(upstream = %self.name, target = %t.authority, ejected = out, "not ejected: the ejection cap is reached");
            return false;
        }
        if !(0..n).any(|j| j != i && self.eligible(j, now)) {
            tracing::debug!(upstream = %self.name, target = %t.authority, "not ejected: it is the last eligible target");
            return false;
        }
        t.ejected_until.store(until, Ordering::Relaxed);
        true
    }

    /// Spawns active health checking (one task per target) if the upstream configures it,
    /// and the sweep that closes idle connections past `idle_timeout` (one task): those of the
    /// direct client, and the targets' shared HTTP/2 connections.
    /// Needs a tokio runtime; without one nothing runs, and without `health_check` every
    /// target stays healthy.
    pub fn start_health_checks(self: &Arc<Self>) -> HealthChecks {
        let mut tasks = Vec::new();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(upstream = %self.name, "no async runtime: health checks not started");
            return HealthChecks { tasks, sweep: None };
        };
        let direct = self.direct.is_some_and(|d| d.max_idle > 0);
        let shared = self
            .targets
            .iter()
            .any(|t| matches!(t.conns, Conns::Shared { .. }));
        let idle_timeout = self.idle_timeout;
        let sweep = (direct || shared).then(|| {
            let weak: Weak<UpstreamPool> = Arc::downgrade(self);
            // Connections close at most a tenth of `idle_timeout` (and at least 100 ms) late.
            let every = (idle_timeout / 10).max(Duration::from_millis(100));
            rt.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(pool) = weak.upgrade() else { return };
                    for t in &pool.targets {
                        t.idle.purge(idle_timeout);
                        if let Conns::Shared { mux, probe, .. } = &t.conns {
                            mux.purge(idle_timeout);
                            probe.purge(idle_timeout);
                        }
                    }
                }
            })
        });
        let Some(hc) = &self.health else {
            return HealthChecks { tasks, sweep };
        };
        let path: PathAndQuery = match hc.path.parse() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(upstream = %self.name, path = %hc.path, error = %e, "invalid health-check path: health checks not started");
                return HealthChecks { tasks, sweep };
            }
        };
        for i in 0..self.targets.len() {
            let weak: Weak<UpstreamPool> = Arc::downgrade(self);
            let path = path.clone();
            let (interval, timeout) = (hc.interval, hc.timeout);
            tasks.push(rt.spawn(async move {
                let mut tick = tokio::time::interval(interval);
                // After a slow probe, wait a full interval rather than probing in a burst.
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(pool) = weak.upgrade() else { return };
                    let ok = pool.probe(i, &path, timeout).await;
                    pool.record_check(i, ok);
                }
            }));
        }
        HealthChecks { tasks, sweep }
    }

    /// One health check of target `i`: GET `path` with `Host` = `health_check.host`, or the
    /// target's `host:port` (over the shared HTTP/2 connection as `:authority`, see
    /// [`Conns`]); 2xx/3xx within `timeout` (head and body) is a success. It goes the way a
    /// request without an upgrade goes, but where requests share one HTTP/2 connection, on
    /// the checks' own (so that it never waits for a stream behind them).
    async fn probe(&self, i: usize, path: &PathAndQuery, timeout: Duration) -> bool {
        let t = &self.targets[i];
        let (authority, host) = match &self.health_host {
            Some((a, h)) => (a, h),
            None => (&t.uri_authority, &t.host_value),
        };
        let via = t.via_probe();
        let over_h2 = matches!(via, Via::Mux(..));
        let uri = match Uri::builder()
            .scheme(t.scheme.clone())
            .authority(if over_h2 { authority } else { &t.uri_authority }.clone())
            .path_and_query(path.clone())
            .build()
        {
            Ok(u) => u,
            Err(_) => return false,
        };
        let mut req = Request::new(empty_body());
        *req.uri_mut() = uri;
        if self.protocol != UpstreamProtocol::Http2 {
            req.headers_mut().insert(HOST, host.clone());
        }
        req.headers_mut().insert(
            USER_AGENT,
            HeaderValue::from_static("portcullis-health-check"),
        );
        let exchange = async {
            let resp = send_via(t, via, req).await.ok()?;
            let status = resp.status();
            // Read (a bounded amount of) the body so the connection can be reused; its
            // content does not matter.
            let _ = Limited::new(resp.into_body(), CHECK_BODY_LIMIT)
                .collect()
                .await;
            Some(status.is_success() || status.is_redirection())
        };
        matches!(
            tokio::time::timeout(timeout, exchange).await,
            Ok(Some(true))
        )
    }

    /// Applies one check result: `healthy_threshold` consecutive successes make a target
    /// healthy, `unhealthy_threshold` consecutive failures unhealthy.
    fn record_check(&self, i: usize, ok: bool) {
        let Some(hc) = &self.health else { return };
        let t = &self.targets[i];
        let bump = |c: &std::sync::atomic::AtomicU32| {
            c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_add(1))
            })
            .unwrap_or(u32::MAX)
            .saturating_add(1)
        };
        if ok {
            t.check_fail.store(0, Ordering::Relaxed);
            if bump(&t.check_ok) >= hc.healthy_threshold && !t.healthy.swap(true, Ordering::Relaxed)
            {
                tracing::info!(upstream = %self.name, target = %t.authority, "target passes its health checks again");
            }
        } else {
            t.check_ok.store(0, Ordering::Relaxed);
            if bump(&t.check_fail) >= hc.unhealthy_threshold
                && t.healthy.swap(false, Ordering::Relaxed)
            {
                tracing::warn!(upstream = %self.name, target = %t.authority, path = %hc.path, "target failed its health checks");
            }
        }
    }
}
