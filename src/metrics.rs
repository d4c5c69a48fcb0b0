//! Prometheus metrics, served as text on the admin listener (`GET /metrics`).
//!
//! Hand-rolled over atomics: a handful of counters and fixed-bucket histograms do not need a
//! registry crate, and the hot path stays a few relaxed atomic adds. Label values are bounded:
//! route *names* from the config (not raw paths), decisions, status classes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Latency buckets in seconds (50 µs … 10 s).
const BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// A cumulative histogram with fixed buckets.
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Decisions as metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow = 0,
    Deny = 1,
    ShadowDeny = 2,
}

const OUTCOMES: [&str; 3] = ["allow", "deny", "shadow_deny"];
const CLASSES: [&str; 6] = ["0xx", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Requests of one route by decision and status class.
pub struct RouteCounters {
    name: String,
    counts: [[AtomicU64; 6]; 3],
    trimmed_items: AtomicU64,
    /// Calls over a rate limit, by [`Limited`] kind: refused, and forwarded in shadow mode.
    rate_limited: [[AtomicU64; 2]; 2],
}

/// Which rate limit a call was over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Caller = 0,
    Route = 1,
}

const LIMITS: [&str; 2] = ["caller", "route"];
const LIMIT_MODES: [&str; 2] = ["enforced", "shadow"];

impl RouteCounters {
    fn new(name: &str) -> Self {
        RouteCounters {
            name: name.to_string(),
            counts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            trimmed_items: AtomicU64::new(0),
            rate_limited: Default::default(),
        }
    }

    /// A call over a rate limit (`shadow`: forwarded all the same).
    pub fn rate_limited(&self, limit: Limited, shadow: bool) {
        self.rate_limited[limit as usize][usize::from(shadow)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self, outcome: Outcome, status: u16) {
        let class = usize::from(status / 100).min(5);
        self.counts[outcome as usize][class].fetch_add(1, Ordering::Relaxed);
    }

    pub fn trimmed(&self, n: u64) {
        self.trimmed_items.fetch_add(n, Ordering::Relaxed);
    }
}

/// Upstream failure kinds.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamError {
    Unavailable = 0,
    Timeout = 1,
    Other = 2,
    /// Refused with 503 `upstream_busy` (`upstream.max_connections`, its queue full or the
    /// wait over).
    Busy = 3,
}

const UPSTREAM_ERRORS: [&str; 4] = ["unavailable", "timeout", "error", "busy"];

/// Every metric of the process.
#[derive(Default)]
pub struct Metrics {
    routes: Mutex<HashMap<String, Arc<RouteCounters>>>,
    pub request_seconds: Histogram,
    pub upstream_seconds: Histogram,
    pub decision_seconds: Histogram,
    upstream_errors: [AtomicU64; 4],
    /// Calls where the candidate policy disagreed: [live allow → candidate deny, live deny →
    /// candidate allow]; and every call the candidate judged.
    candidate_disagreements: [AtomicU64; 2],
    candidate_evaluations: AtomicU64,
    /// Client connections (hyper engine): open now, accepted in all, and how often the
    /// accept loop paused at `listen.max_connections` (new connections waited in the backlog).
    pub client_connections: AtomicU64,
    pub client_connections_accepted: AtomicU64,
    pub client_connection_limit_waits: AtomicU64,
    /// Client connections closed because a write made no progress (`listen.write_timeout_ms`).
    pub client_write_timeouts: AtomicU64,
    /// Calls served by the HTTP/1.1 lane (`listen.h1_lane`), and of them those it forwarded
    /// with a request body (streamed to the CRM, or cut at a limit).
    pub lane_requests: AtomicU64,
    pub lane_bodies: AtomicU64,
}

/// The counters of requests that matched no route.
pub const UNMATCHED: &str = "(unmatched)";

impl Metrics {
    /// Counters for these route names, in order (existing counters are kept across reloads).
    pub fn route_counters<'a>(
        &self,
        names: impl Iterator<Item = &'a str>,
    ) -> Vec<Arc<RouteCounters>> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        names
            .map(|n| {
                routes
                    .entry(n.to_string())
                    .or_insert_with(|| Arc::new(RouteCounters::new(n)))
                    .clone()
            })
            .collect()
    }

    /// Count one candidate evaluation, and a disagreement when the outcomes differ.
    pub fn candidate(&self, live_allows: bool, candidate_allows: bool) {
        self.candidate_evaluations.fetch_add(1, Ordering::Relaxed);
        if live_allows != candidate_allows {
            let i = if live_allows { 0 } else { 1 };
            self.candidate_disagreements[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition; `extra` appends gauges owned elsewhere.
    pub fn render(&self, extra: &[(&str, &str, &str, f64)]) -> String {
        let mut out = String::with_capacity(16 * 1024);
        out.push_str(
            "# HELP permgate_requests_total Requests by route, decision and status class.\n",
        );
        out.push_str("# TYPE permgate_requests_total counter\n");
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<&String> = routes.keys().collect();
        names.sort();
        for n in &names {
            let r = &routes[*n];
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                for (c, class) in CLASSES.iter().enumerate() {
                    let v = r.counts[o][c].load(Ordering::Relaxed);
                    if v > 0 {
                        let _ = writeln!(
                            out,
                            "permgate_requests_total{{route=\"{}\",decision=\"{outcome}\",status=\"{class}\"}} {v}",
                            escape(&r.name)
                        );
                    }
                }
            }
        }
        out.push_str("# HELP permgate_trimmed_items_total Bulk items removed before forwarding.\n");
        out.push_str("# TYPE permgate_trimmed_items_total counter\n");
        for n in &names {
            let v = routes[*n].trimmed_items.load(Ordering::Relaxed);
            if v > 0 {
                let _ = writeln!(
                    out,
                    "permgate_trimmed_items_total{{route=\"{}\"}} {v}",
                    escape(n)
                );
            }
        }
        out.push_str("# HELP permgate_rate_limited_total Calls over a rate limit, by route, limit (caller, route) and mode (enforced: refused with 429; shadow: forwarded).\n");
        out.push_str("# TYPE permgate_rate_limited_total counter\n");
        for n in &names {
            for (l, limit) in LIMITS.iter().enumerate() {
                for (m, mode) in LIMIT_MODES.iter().enumerate() {
                    let v = routes[*n].rate_limited[l][m].load(Ordering::Relaxed);
                    if v > 0 {
                        let _ = writeln!(
                            out,
                            "permgate_rate_limited_total{{route=\"{}\",limit=\"{limit}\",mode=\"{mode}\"}} {v}",
                            escape(n)
                        );
                    }
                }
            }
        }
        drop(routes);
        for (name, kind, help, v) in [
            (
                "permgate_client_connections",
                "gauge",
                "Client connections open now.",
                &self.client_connections,
            ),
            (
                "permgate_client_connections_accepted_total",
                "counter",
                "Client connections accepted.",
                &self.client_connections_accepted,
            ),
            (
                "permgate_client_connection_limit_waits_total",
                "counter",
                "Times the accept loop paused at listen.max_connections (new connections waited in the listen backlog).",
                &self.client_connection_limit_waits,
            ),
            (
                "permgate_client_write_timeouts_total",
                "counter",
                "Client connections closed because a write made no progress for listen.write_timeout_ms.",
                &self.client_write_timeouts,
            ),
            (
                "permgate_lane_requests_total",
                "counter",
                "Calls served by the HTTP/1.1 lane (listen.h1_lane) rather than hyper's server.",
                &self.lane_requests,
            ),
            (
                "permgate_lane_request_bodies_total",
                "counter",
                "Calls with a request body the HTTP/1.1 lane forwarded (the body streamed to the CRM, or cut at a limit).",
                &self.lane_bodies,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        for (name, help, h) in [
            (
                "permgate_request_duration_seconds",
                "Time from request start to the end of the response.",
                &self.request_seconds,
            ),
            (
                "permgate_upstream_duration_seconds",
                "Time from choosing the CRM peer to its response header.",
                &self.upstream_seconds,
            ),
            (
                "permgate_decision_duration_seconds",
                "Time to decide (canonicalize, match, identify, check).",
                &self.decision_seconds,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            h.render(&mut out, name, "");
        }
        out.push_str(
            "# HELP permgate_upstream_errors_total Failed exchanges with the CRM by kind.\n",
        );
        out.push_str("# TYPE permgate_upstream_errors_total counter\n");
        for (i, kind) in UPSTREAM_ERRORS.iter().enumerate() {
            let _ = writeln!(
                out,
                "permgate_upstream_errors_total{{kind=\"{kind}\"}} {}",
                self.upstream_errors[i].load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP permgate_candidate_evaluations_total Calls also judged by the candidate policy.\n# TYPE permgate_candidate_evaluations_total counter\n");
        let _ = writeln!(
            out,
            "permgate_candidate_evaluations_total {}",
            self.candidate_evaluations.load(Ordering::Relaxed)
        );
        out.push_str("# HELP permgate_candidate_disagreements_total Calls where the candidate policy decided otherwise.\n# TYPE permgate_candidate_disagreements_total counter\n");
        for (i, (live, cand)) in [("allow", "deny"), ("deny", "allow")].iter().enumerate() {
            let _ = writeln!(
                out,
                "permgate_candidate_disagreements_total{{live=\"{live}\",candidate=\"{cand}\"}} {}",
                self.candidate_disagreements[i].load(Ordering::Relaxed)
            );
        }
        for (name, kind, help, value) in extra {
            let _ = writeln!(
                out,
                "# HELP {} {help}\n# TYPE {} {kind}\n{name} {value}",
                base(name),
                base(name)
            );
        }
        out
    }
}

/// A metric name without its labels.
fn base(name: &str) -> &str {
    name.split('{').next().unwrap_or(name)
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_survive_reloads_and_render() {
        let m = Metrics::default();
        let a = m.route_counters(["r1", "r2"].into_iter());
        a[0].count(Outcome::Allow, 200);
        a[0].count(Outcome::Deny, 403);
        let b = m.route_counters(["r2", "r1"].into_iter());
        b[1].count(Outcome::Allow, 204);
        m.request_seconds.observe(Duration::from_micros(300));
        m.upstream_error(UpstreamError::Timeout);
        a[1].rate_limited(Limited::Route, true);
        let text = m.render(&[("permgate_snapshot_age_seconds", "gauge", "Age.", 3.5)]);
        assert!(
            text.contains(
                "permgate_requests_total{route=\"r1\",decision=\"allow\",status=\"2xx\"} 2"
            ),
            "{text}"
        );
        assert!(text
            .contains("permgate_requests_total{route=\"r1\",decision=\"deny\",status=\"4xx\"} 1"));
        assert!(text.contains("permgate_request_duration_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("permgate_request_duration_seconds_bucket{le=\"0.00025\"} 0"));
        assert!(text.contains("permgate_request_duration_seconds_count 1"));
        assert!(text.contains("permgate_upstream_errors_total{kind=\"timeout\"} 1"));
        assert!(text.contains("permgate_snapshot_age_seconds 3.5"));
        assert!(text.contains(
            "permgate_rate_limited_total{route=\"r2\",limit=\"route\",mode=\"shadow\"} 1"
        ));
        assert!(text.contains("permgate_client_connections 0"));
    }
}
