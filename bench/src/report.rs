//! Results: the types written to JSON, the markdown table printed on stdout, and the SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::load::LoadResult;

/// One measured round of one variant.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub round: usize,
    pub requests: u64,
    pub elapsed_s: f64,
    pub throughput: f64,
    /// CPU time of the measured process (the proxy; the CRM for `direct`) per request.
    pub cpu_us_per_req: Option<f64>,
    /// CPU time of the upstream CRM per request.
    pub upstream_cpu_us_per_req: Option<f64>,
    pub p50_us: u64,
    pub p99_us: u64,
    pub unexpected: u64,
    pub reconnects: u64,
    /// TLS handshakes in the measured window (connection per call), and how many resumed.
    pub tls_handshakes: u64,
    pub tls_resumed: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub transport_errors: BTreeMap<String, u64>,
}

impl Round {
    pub fn new(round: usize, r: &LoadResult, cpu: Option<f64>, upstream_cpu: Option<f64>) -> Round {
        let per = |c: Option<f64>| {
            c.filter(|_| r.requests > 0)
                .map(|c| c * 1e6 / r.requests as f64)
        };
        Round {
            round,
            requests: r.requests,
            elapsed_s: r.elapsed.as_secs_f64(),
            throughput: r.throughput(),
            cpu_us_per_req: per(cpu),
            upstream_cpu_us_per_req: per(upstream_cpu),
            p50_us: r.quantile_us(0.5),
            p99_us: r.quantile_us(0.99),
            unexpected: r.unexpected,
            reconnects: r.reconnects,
            tls_handshakes: r.tls_handshakes,
            tls_resumed: r.tls_resumed,
            statuses: r.statuses.clone(),
            transport_errors: r.transport_errors.clone(),
        }
    }
}

/// A scenario × protocol × mode × variant: its rounds, and their summary (medians of the
/// rounds for cost and throughput; latency from the rounds' merged histogram).
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub scenario: String,
    pub protocol: String,
    pub mode: String,
    pub variant: String,
    pub rounds: Vec<Round>,
    pub cpu_us_per_req: Option<f64>,
    pub upstream_cpu_us_per_req: Option<f64>,
    pub throughput: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub requests: u64,
    pub unexpected: u64,
    pub transport_errors: u64,
    pub reconnects: u64,
    pub tls_handshakes: u64,
    pub tls_resumed: u64,
    pub statuses: BTreeMap<u16, u64>,
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// How much higher `cell`'s p99 is than `base`'s, paired by round (rounds of the variants
/// alternate, so round k of each ran in the same few seconds): the median of the per-round
/// differences, µs. Steadier than the difference of the merged histograms' p99 on a shared
/// machine, where every variant's p99 moves by hundreds of µs between rounds.
pub fn paired_p99_delta(cell: &Cell, base: &Cell) -> Option<f64> {
    let deltas = cell
        .rounds
        .iter()
        .filter_map(|r| {
            let b = base.rounds.iter().find(|b| b.round == r.round)?;
            (r.requests > 0 && b.requests > 0).then_some(r.p99_us as f64 - b.p99_us as f64)
        })
        .collect();
    median(deltas)
}

impl Cell {
    pub fn summarize(
        scenario: &str,
        protocol: &str,
        mode: &str,
        variant: &str,
        rounds: Vec<Round>,
        hist: &Histogram<u64>,
    ) -> Cell {
        let mut statuses = BTreeMap::new();
        for r in &rounds {
            for (k, v) in &r.statuses {
                *statuses.entry(*k).or_insert(0) += v;
            }
        }
        Cell {
            scenario: scenario.into(),
            protocol: protocol.into(),
            mode: mode.into(),
            variant: variant.into(),
            cpu_us_per_req: median(rounds.iter().filter_map(|r| r.cpu_us_per_req).collect()),
            upstream_cpu_us_per_req: median(
                rounds
                    .iter()
                    .filter_map(|r| r.upstream_cpu_us_per_req)
                    .collect(),
            ),
            throughput: median(rounds.iter().map(|r| r.throughput).collect()).unwrap_or(0.0),
            p50_us: hist.value_at_quantile(0.5),
            p90_us: hist.value_at_quantile(0.9),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            max_us: hist.max(),
            requests: rounds.iter().map(|r| r.requests).sum(),
            unexpected: rounds.iter().map(|r| r.unexpected).sum(),
            transport_errors: rounds
                .iter()
                .map(|r| r.transport_errors.values().sum::<u64>())
                .sum(),
            reconnects: rounds.iter().map(|r| r.reconnects).sum(),
            tls_handshakes: rounds.iter().map(|r| r.tls_handshakes).sum(),
            tls_resumed: rounds.iter().map(|r| r.tls_resumed).sum(),
            statuses,
            rounds,
        }
    }

    fn group(&self) -> String {
        format!("{} · {} · {}", self.scenario, self.protocol, self.mode)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub open_files_limit: Option<u64>,
}

impl Machine {
    pub fn probe() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model: read("/proc/cpuinfo")
                .lines()
                .find_map(|l| {
                    l.strip_prefix("model name")
                        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                })
                .unwrap_or_default(),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            loadavg_start: read("/proc/loadavg").trim().to_string(),
            loadavg_end: String::new(),
            open_files_limit: crate::procstat::open_files_limit(),
        }
    }
}

/// Per-process cost outside the timed rounds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Memory {
    pub variant: String,
    pub process: String,
    pub pid: u32,
    pub version: String,
    /// VmHWM after the load rounds.
    pub peak_rss_bytes: Option<u64>,
    /// VmRSS just before the idle-connection test.
    pub rss_before_idle_bytes: Option<u64>,
    /// VmRSS while holding `idle_connections` keep-alive connections.
    pub rss_idle_bytes: Option<u64>,
    pub idle_connections: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: String,
    pub date_utc: String,
    pub command: String,
    pub machine: Machine,
    pub settings: BTreeMap<String, String>,
    pub variants: BTreeMap<String, String>,
    pub skipped: Vec<String>,
    pub cells: Vec<Cell>,
    pub memory: Vec<Memory>,
    pub notes: Vec<String>,
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

fn mb(b: Option<u64>) -> String {
    b.map(|b| format!("{:.1}", b as f64 / 1_048_576.0))
        .unwrap_or_else(|| "–".into())
}

impl Report {
    fn groups(&self) -> Vec<(String, Vec<&Cell>)> {
        let mut out: Vec<(String, Vec<&Cell>)> = Vec::new();
        for c in &self.cells {
            let g = c.group();
            match out.iter_mut().find(|(k, _)| *k == g) {
                Some((_, v)) => v.push(c),
                None => out.push((g, vec![c])),
            }
        }
        out
    }

    /// The markdown report: ratios first, then absolute figures, then memory.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "CPU = CPU time of the proxy process (utime+stime from /proc) per request, median of rounds; \
`direct` shows the CRM's own. Latency from all rounds' merged HDR histogram, µs.\n"
        );
        for (g, cells) in self.groups() {
            let cell = |v: &str| cells.iter().find(|c| c.variant == v);
            let find = |v: &str| cell(v).and_then(|c| c.cpu_us_per_req);
            let nginx = find("nginx");
            let haproxy = find("haproxy-authz");
            // Each engine against its own pass-through.
            let pass_cell = |v: &str| {
                if v.starts_with("permgate-hyper") {
                    cell("permgate-hyper-pass")
                } else {
                    cell("permgate-pass")
                }
            };
            let pass_of = |v: &str| pass_cell(v).and_then(|c| c.cpu_us_per_req);
            let p99_over_pass = |c: &Cell| match pass_cell(&c.variant) {
                Some(p) if c.variant.starts_with("permgate") && p.variant != c.variant => {
                    paired_p99_delta(c, p).map_or("–".into(), |d| format!("{d:+.0}"))
                }
                _ => "–".into(),
            };
            let _ = writeln!(s, "### {g}\n");
            let _ = writeln!(
                s,
                "| variant | CPU ÷ nginx | CPU ÷ HAProxy authz | CPU ÷ permgate pass | p99 − pass µs (paired) | p50 µs | p99 µs | CPU µs/req | CRM CPU µs/req | req/s | p90 | p99.9 | max | requests | unexpected | transport errors |"
            );
            let _ = writeln!(
                s,
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for c in &cells {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                    c.variant,
                    if c.variant == "direct" { "–".into() } else { ratio(c.cpu_us_per_req, nginx) },
                    if c.variant == "direct" { "–".into() } else { ratio(c.cpu_us_per_req, haproxy) },
                    if c.variant == "direct" { "–".into() } else { ratio(c.cpu_us_per_req, pass_of(&c.variant)) },
                    p99_over_pass(c),
                    c.p50_us,
                    c.p99_us,
                    fmt_opt(c.cpu_us_per_req, 1),
                    fmt_opt(c.upstream_cpu_us_per_req, 1),
                    c.throughput,
                    c.p90_us,
                    c.p999_us,
                    c.max_us,
                    c.requests,
                    c.unexpected,
                    c.transport_errors,
                );
            }
            let statuses: Vec<String> = cells
                .iter()
                .map(|c| {
                    let st: Vec<String> =
                        c.statuses.iter().map(|(k, v)| format!("{k}×{v}")).collect();
                    format!("{}: {}", c.variant, st.join(" "))
                })
                .collect();
            let _ = writeln!(s, "\nStatuses — {}\n", statuses.join("; "));
            let resumed: Vec<String> = cells
                .iter()
                .filter(|c| c.tls_handshakes > 0)
                .map(|c| {
                    format!(
                        "{}: {} of {} ({:.0}%)",
                        c.variant,
                        c.tls_resumed,
                        c.tls_handshakes,
                        100.0 * c.tls_resumed as f64 / c.tls_handshakes as f64
                    )
                })
                .collect();
            if !resumed.is_empty() {
                let _ = writeln!(s, "TLS handshakes resumed — {}\n", resumed.join("; "));
            }
        }
        if !self.memory.is_empty() {
            let _ = writeln!(s, "### Memory\n");
            let _ = writeln!(s, "| variant | process | peak RSS after load (MB) | RSS before idle test (MB) | RSS with N idle keep-alive conns (MB) | N held | KB per idle conn |");
            let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
            for m in &self.memory {
                let per = match (m.rss_idle_bytes, m.rss_before_idle_bytes) {
                    (Some(a), Some(b)) if m.idle_connections > 0 => {
                        format!(
                            "{:.1}",
                            (a as f64 - b as f64) / 1024.0 / m.idle_connections as f64
                        )
                    }
                    _ => "–".into(),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    m.variant,
                    m.process,
                    mb(m.peak_rss_bytes),
                    mb(m.rss_before_idle_bytes),
                    mb(m.rss_idle_bytes),
                    m.idle_connections,
                    per
                );
            }
            s.push('\n');
        }
        for sk in &self.skipped {
            let _ = writeln!(s, "- skipped: {sk}");
        }
        for n in &self.notes {
            let _ = writeln!(s, "- note: {n}");
        }
        s
    }

    /// A hand-written SVG: per group, latency bars (p50 solid, p99 light) and CPU/request bars.
    pub fn svg(&self) -> String {
        let groups = self.groups();
        let row_h = 22.0;
        let label_w = 150.0;
        let panel_w = 380.0;
        let gap = 40.0;
        let width = label_w + 2.0 * panel_w + gap + 40.0;
        let mut y = 40.0;
        let mut body = String::new();
        let esc = |t: &str| t.replace('&', "&amp;").replace('<', "&lt;");
        for (g, cells) in &groups {
            let _ = writeln!(
                body,
                r#"<text x="10" y="{}" font-weight="bold">{}</text>"#,
                y,
                esc(g)
            );
            y += 8.0;
            let max_lat = cells.iter().map(|c| c.p99_us).max().unwrap_or(1).max(1) as f64;
            let max_cpu = cells
                .iter()
                .filter_map(|c| c.cpu_us_per_req)
                .fold(1e-9, f64::max);
            let x_lat = label_w;
            let x_cpu = label_w + panel_w + gap;
            let _ = writeln!(
                body,
                r##"<text x="{x_lat}" y="{}" font-size="11" fill="#555">latency µs (dark: p50, light: p99)</text>"##,
                y + 10.0
            );
            let _ = writeln!(
                body,
                r##"<text x="{x_cpu}" y="{}" font-size="11" fill="#555">proxy CPU µs per request</text>"##,
                y + 10.0
            );
            y += 16.0;
            for c in cells {
                let _ = writeln!(
                    body,
                    r#"<text x="10" y="{}" font-size="12">{}</text>"#,
                    y + 14.0,
                    esc(&c.variant)
                );
                let w99 = c.p99_us as f64 / max_lat * (panel_w - 70.0);
                let w50 = c.p50_us as f64 / max_lat * (panel_w - 70.0);
                let _ = writeln!(
                    body,
                    r##"<rect x="{x_lat}" y="{}" width="{w99:.1}" height="16" fill="#9ecae1"/>"##,
                    y + 2.0
                );
                let _ = writeln!(
                    body,
                    r##"<rect x="{x_lat}" y="{}" width="{w50:.1}" height="16" fill="#3182bd"/>"##,
                    y + 2.0
                );
                let _ = writeln!(
                    body,
                    r#"<text x="{:.1}" y="{}" font-size="11">{} / {}</text>"#,
                    x_lat + w99 + 4.0,
                    y + 14.0,
                    c.p50_us,
                    c.p99_us
                );
                if let Some(cpu) = c.cpu_us_per_req {
                    let w = cpu / max_cpu * (panel_w - 60.0);
                    let color = if c.variant.starts_with("permgate") {
                        "#e6550d"
                    } else {
                        "#969696"
                    };
                    let _ = writeln!(
                        body,
                        r#"<rect x="{x_cpu}" y="{}" width="{w:.1}" height="16" fill="{color}"/>"#,
                        y + 2.0
                    );
                    let _ = writeln!(
                        body,
                        r#"<text x="{:.1}" y="{}" font-size="11">{cpu:.1}</text>"#,
                        x_cpu + w + 4.0,
                        y + 14.0
                    );
                }
                y += row_h;
            }
            y += 24.0;
        }
        let height = y + 10.0;
        format!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="22" font-size="15" font-weight="bold">permgate-bench {} — {} ({} cores)</text>
{body}</svg>
"##,
            esc(&self.date_utc),
            esc(&self.machine.cpu_model),
            self.machine.nproc
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    fn cell(variant: &str, p99s: &[(usize, u64)]) -> Cell {
        let rounds = p99s
            .iter()
            .map(|&(round, p99_us)| Round {
                round,
                requests: 1000,
                elapsed_s: 1.0,
                throughput: 1000.0,
                cpu_us_per_req: Some(10.0),
                upstream_cpu_us_per_req: None,
                p50_us: p99_us / 2,
                p99_us,
                unexpected: 0,
                reconnects: 0,
                tls_handshakes: 0,
                tls_resumed: 0,
                statuses: BTreeMap::new(),
                transport_errors: BTreeMap::new(),
            })
            .collect();
        let hist = Histogram::<u64>::new(3).unwrap();
        Cell::summarize("s", "h1", "closed", variant, rounds, &hist)
    }

    #[test]
    fn p99_over_pass_is_paired_by_round() {
        // The machine got slower in round 1 for both: the paired delta sees +20 each time.
        let pass = cell("permgate-pass", &[(0, 1000), (1, 3000), (2, 1100)]);
        let authz = cell("permgate-authz", &[(0, 1020), (1, 3020), (2, 1120)]);
        assert_eq!(paired_p99_delta(&authz, &pass), Some(20.0));
        // A round missing on one side is left out; one with no requests too.
        let mut short = cell("permgate-authz", &[(0, 1050), (2, 1090)]);
        assert_eq!(paired_p99_delta(&short, &pass), Some(20.0));
        short.rounds[0].requests = 0;
        assert_eq!(paired_p99_delta(&short, &pass), Some(-10.0));
        assert_eq!(paired_p99_delta(&cell("x", &[]), &pass), None);
    }
}
