//! Scenario files (`bench/scenarios/*.toml`): what requests to send, as whom, and what status to
//! expect; compiled into a [`Plan`] the load generator draws from.
//!
//! ```toml
//! name = "allowed-get"
//! description = "A sales rep reads one customer"
//! authz_only = false            # true: run only on variants that authorize (a denial
//!                               # scenario would reach the CRM through a plain proxy)
//! [population]                  # users generated into the snapshot, one JWT each
//! sales_rep = 100
//! [[request]]
//! method = "GET"
//! path = "/api/v1/customers/{1..60}"   # {lo..hi}: a random integer per request
//! role = "sales_rep"            # a random generated user holding this role
//! # user = "u-rep1"             # or one named user (the demo snapshot's users exist too)
//! expect = 200                  # on variants that authorize: 200, "2xx", [200, 404]
//! expect_plain = "2xx"          # on variants that don't (default: any status below 500)
//! weight = 10                   # relative frequency (default 1)
//! body = '{"name":"x"}'         # optional; sent as application/json
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use http::{HeaderValue, Method};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub authz_only: bool,
    /// Role id → number of generated users holding it.
    #[serde(default)]
    pub population: BTreeMap<String, usize>,
    #[serde(rename = "request")]
    pub requests: Vec<RequestSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// Send no credential at all.
    #[serde(default)]
    pub anonymous: bool,
    #[serde(default)]
    pub expect: Option<ExpectSpec>,
    #[serde(default)]
    pub expect_plain: Option<ExpectSpec>,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub body: Option<String>,
}

fn one() -> u32 {
    1
}

/// `200`, `"2xx"`, `[200, 404]` or `["2xx", 404]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ExpectSpec {
    Code(u16),
    Class(String),
    List(Vec<ExpectSpec>),
}

/// Compiled status expectation: inclusive ranges.
#[derive(Debug, Clone)]
pub struct Expect(Vec<(u16, u16)>);

impl Expect {
    pub fn any_below_500() -> Self {
        Expect(vec![(100, 499)])
    }

    pub fn from_spec(spec: &ExpectSpec) -> Result<Self, String> {
        let mut out = Vec::new();
        fn add(spec: &ExpectSpec, out: &mut Vec<(u16, u16)>) -> Result<(), String> {
            match spec {
                ExpectSpec::Code(c) => out.push((*c, *c)),
                ExpectSpec::Class(s) => {
                    let b = s.as_bytes();
                    if b.len() == 3 && b[0].is_ascii_digit() && &s[1..] == "xx" {
                        let lo = u16::from(b[0] - b'0') * 100;
                        out.push((lo, lo + 99));
                    } else if let Ok(c) = s.parse::<u16>() {
                        out.push((c, c));
                    } else {
                        return Err(format!(
                            "expect '{s}' is not a status or a class like \"2xx\""
                        ));
                    }
                }
                ExpectSpec::List(l) => {
                    for s in l {
                        add(s, out)?;
                    }
                }
            }
            Ok(())
        }
        add(spec, &mut out)?;
        Ok(Expect(out))
    }

    pub fn matches(&self, status: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status))
    }
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let s: Scenario = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if s.requests.is_empty() {
            return Err(format!("{}: no [[request]]", path.display()));
        }
        for (i, r) in s.requests.iter().enumerate() {
            let who = usize::from(r.role.is_some())
                + usize::from(r.user.is_some())
                + usize::from(r.anonymous);
            if who != 1 {
                return Err(format!(
                    "{}: request {}: give exactly one of role, user, anonymous",
                    path.display(),
                    i + 1
                ));
            }
            if let Some(role) = &r.role {
                if !s.population.contains_key(role) {
                    return Err(format!(
                        "{}: request {}: role '{role}' has no users in [population]",
                        path.display(),
                        i + 1
                    ));
                }
            }
            PathTemplate::parse(&r.path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(s)
    }

    /// Load every `*.toml` in a folder, sorted by file name.
    pub fn load_dir(dir: &Path) -> Result<Vec<Scenario>, String> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        files.iter().map(|p| Scenario::load(p)).collect()
    }
}

/// A path with `{lo..hi}` placeholders.
#[derive(Debug, Clone)]
pub struct PathTemplate(Vec<Part>);

#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    Range(u64, u64),
}

impl PathTemplate {
    pub fn parse(s: &str) -> Result<PathTemplate, String> {
        if !s.starts_with('/') {
            return Err(format!("path '{s}' must start with '/'"));
        }
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in '{s}'"))?
                + open;
            let inner = &rest[open + 1..close];
            let (lo, hi) = inner
                .split_once("..")
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .filter(|(a, b): &(u64, u64)| a <= b)
                .ok_or_else(|| format!("'{{{inner}}}' in '{s}' is not a range like {{1..60}}"))?;
            parts.push(Part::Range(lo, hi));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(PathTemplate(parts))
    }

    pub fn render(&self, rng: &mut fastrand::Rng, out: &mut String) {
        use std::fmt::Write;
        out.clear();
        for p in &self.0 {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::Range(lo, hi) => {
                    let _ = write!(out, "{}", rng.u64(*lo..=*hi));
                }
            }
        }
    }
}

/// One request kind, ready to send.
pub struct Entry {
    pub method: Method,
    pub path: PathTemplate,
    /// `Authorization` values to pick from (empty: anonymous).
    pub credentials: Vec<HeaderValue>,
    pub body: Option<Bytes>,
    pub expect: Expect,
}

/// A scenario compiled for one target: entries and their cumulative weights.
pub struct Plan {
    pub entries: Vec<Entry>,
    cumulative: Vec<u64>,
}

/// Who a credential is for: resolves a request's `role`/`user` to `Authorization` values.
pub trait Credentials {
    fn for_role(&self, role: &str, count: usize) -> Result<Vec<HeaderValue>, String>;
    fn for_user(&self, user: &str) -> Result<HeaderValue, String>;
}

impl Plan {
    /// Compile a scenario; `authorizing` picks `expect` or `expect_plain`.
    pub fn build(s: &Scenario, creds: &dyn Credentials, authorizing: bool) -> Result<Plan, String> {
        let mut entries = Vec::new();
        let mut cumulative = Vec::new();
        let mut total = 0u64;
        for r in &s.requests {
            let method = Method::from_bytes(r.method.as_bytes())
                .map_err(|_| format!("bad method '{}'", r.method))?;
            let credentials = if let Some(role) = &r.role {
                creds.for_role(role, s.population.get(role).copied().unwrap_or(0))?
            } else if let Some(user) = &r.user {
                vec![creds.for_user(user)?]
            } else {
                Vec::new()
            };
            let spec = if authorizing {
                &r.expect
            } else {
                &r.expect_plain
            };
            let expect = match spec {
                Some(e) => Expect::from_spec(e)?,
                None => Expect::any_below_500(),
            };
            total += u64::from(r.weight);
            cumulative.push(total);
            entries.push(Entry {
                method,
                path: PathTemplate::parse(&r.path)?,
                credentials,
                body: r.body.as_ref().map(|b| Bytes::from(b.clone())),
                expect,
            });
        }
        if total == 0 {
            return Err(format!("scenario {}: all weights are 0", s.name));
        }
        Ok(Plan {
            entries,
            cumulative,
        })
    }

    /// A random entry's index, by weight.
    pub fn pick(&self, rng: &mut fastrand::Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1);
        let x = rng.u64(0..total);
        self.cumulative
            .partition_point(|c| *c <= x)
            .min(self.entries.len() - 1)
    }
}

/// The generated user id for the `i`-th user of `role`.
pub fn generated_user(role: &str, i: usize) -> String {
    format!("u-bench-{role}-{i:05}")
}

/// The union of several scenarios' populations (largest count per role).
pub fn merged_population(scenarios: &[Scenario]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in scenarios {
        for (role, n) in &s.population {
            let e = out.entry(role.clone()).or_insert(0);
            *e = (*e).max(*n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_in_range() {
        let t = PathTemplate::parse("/api/v1/customers/{1..3}/notes").unwrap();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut s = String::new();
        for _ in 0..50 {
            t.render(&mut rng, &mut s);
            assert!(["1", "2", "3"]
                .iter()
                .any(|n| s == format!("/api/v1/customers/{n}/notes")));
        }
        assert!(PathTemplate::parse("/a/{3..1}").is_err());
        assert!(PathTemplate::parse("a").is_err());
    }

    #[test]
    fn expectations() {
        let e = Expect::from_spec(&ExpectSpec::List(vec![
            ExpectSpec::Class("2xx".into()),
            ExpectSpec::Code(404),
        ]))
        .unwrap();
        assert!(e.matches(204) && e.matches(404) && !e.matches(403));
        assert!(Expect::from_spec(&ExpectSpec::Class("2x".into())).is_err());
    }

    #[test]
    fn shipped_scenarios_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let all = Scenario::load_dir(&dir).unwrap();
        assert!(all.len() >= 3);
    }
}
