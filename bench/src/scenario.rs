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
//! # body = '{"ids":[{{1..10000}}]}'  # {{lo..hi}}: the integers lo..=hi, comma-separated,
//! #                             # expanded once when the plan is built (large bulk bodies)
//! # expect_header = { "x-permgate-removed-count" = "6250" }  # on variants that authorize:
//! #                             # these response headers with these exact values, and
//! # expect_body_contains = '"total":15'  # this text in the response body (else unexpected)
//!
//! # What the permgate variants' snapshot must hold for this scenario (all optional):
//! [[snapshot.roles]]            # custom roles, as in a snapshot's "roles"
//! id = "team_rep"
//! permissions = ["lead.view@team", "lead.reassign@team"]
//! [snapshot.teams]              # role → teams each of its generated users is in
//! team_rep = ["sales-east"]
//! [[snapshot.records]]          # record owners: ids lo..=hi, owners given round-robin
//! type = "lead"                 # (id n gets owners[(n - 1) % len]; record types the bench's
//! ids = "1..10000"              # permgate config declares: lead)
//! owners = ["u-admin", "u-sm", "u-rep1"]
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
    #[serde(default)]
    pub snapshot: SnapshotSpec,
}

/// What a scenario adds to the permgate variants' snapshot (module docs).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSpec {
    #[serde(default)]
    pub roles: Vec<RoleSpec>,
    /// Role id → teams of every generated user holding it.
    #[serde(default)]
    pub teams: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub records: Vec<RecordsSpec>,
}

/// A custom role, as written in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub permissions: Vec<String>,
}

/// Owners of a range of records: id `n` gets `owners[(n - 1) % owners.len()]` (the sample CRM's
/// own round-robin, so the two can agree).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsSpec {
    #[serde(rename = "type")]
    pub kind: String,
    /// `"lo..hi"`, inclusive.
    pub ids: String,
    pub owners: Vec<String>,
}

/// The most records one `[[snapshot.records]]` or one `{{lo..hi}}` may generate.
const MAX_GENERATED: u64 = 1_000_000;

/// `"lo..hi"` with `lo <= hi` and at most [`MAX_GENERATED`] values.
fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (lo, hi) = s
        .split_once("..")
        .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)))
        .filter(|(a, b)| a <= b)
        .ok_or_else(|| format!("'{s}' is not a range like 1..100"))?;
    if hi - lo >= MAX_GENERATED {
        return Err(format!("'{s}': more than {MAX_GENERATED} values"));
    }
    Ok((lo, hi))
}

impl SnapshotSpec {
    /// Check ranges and owner lists (at load time).
    fn check(&self) -> Result<(), String> {
        for r in &self.records {
            parse_range(&r.ids).map_err(|e| format!("snapshot.records: {e}"))?;
            if r.owners.is_empty() {
                return Err(format!("snapshot.records {} {}: no owners", r.kind, r.ids));
            }
        }
        Ok(())
    }

    /// Several scenarios' additions in one: roles by id (the same id must mean the same role),
    /// teams united, records listed in order.
    pub fn merged(scenarios: &[Scenario]) -> Result<SnapshotSpec, String> {
        let mut out = SnapshotSpec::default();
        for s in scenarios {
            for role in &s.snapshot.roles {
                match out.roles.iter().find(|r| r.id == role.id) {
                    Some(r) if r != role => {
                        return Err(format!(
                            "scenario {}: role '{}' differs from another scenario's",
                            s.name, role.id
                        ))
                    }
                    Some(_) => {}
                    None => out.roles.push(role.clone()),
                }
            }
            for (role, teams) in &s.snapshot.teams {
                let t = out.teams.entry(role.clone()).or_default();
                for team in teams {
                    if !t.contains(team) {
                        t.push(team.clone());
                    }
                }
            }
            out.records.extend(s.snapshot.records.iter().cloned());
        }
        Ok(out)
    }

    /// Every generated record's owner, by (type, id); an id given two different owners is an
    /// error.
    pub fn owners(&self) -> Result<BTreeMap<(String, u64), String>, String> {
        let mut out = BTreeMap::new();
        for r in &self.records {
            let (lo, hi) = parse_range(&r.ids)?;
            for n in lo..=hi {
                let i = ((n.max(1) - 1) % r.owners.len().max(1) as u64) as usize;
                let owner = r.owners.get(i).ok_or("no owners")?;
                match out.insert((r.kind.clone(), n), owner.clone()) {
                    Some(prev) if prev != *owner => {
                        return Err(format!(
                            "snapshot.records: {} {n} is owned by both '{prev}' and '{owner}'",
                            r.kind
                        ))
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }
}

/// Expand every `{{lo..hi}}` in a body into `lo,lo+1,…,hi`.
pub fn expand_body(s: &str) -> Result<String, String> {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find("}}")
            .ok_or_else(|| "unclosed '{{' in body".to_string())?
            + open;
        let (lo, hi) = parse_range(&rest[open + 2..close]).map_err(|e| format!("body: {e}"))?;
        for n in lo..=hi {
            if n > lo {
                out.push(',');
            }
            let _ = write!(out, "{n}");
        }
        rest = &rest[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
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
    /// Response headers (name → exact value) required on variants that authorize.
    #[serde(default)]
    pub expect_header: BTreeMap<String, String>,
    /// Text the response body must hold on variants that authorize.
    #[serde(default)]
    pub expect_body_contains: Option<String>,
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
            if let Some(body) = &r.body {
                expand_body(body)
                    .map_err(|e| format!("{}: request {}: {e}", path.display(), i + 1))?;
            }
            for (name, value) in &r.expect_header {
                http::HeaderName::from_bytes(name.as_bytes())
                    .ok()
                    .zip(HeaderValue::from_str(value).ok())
                    .ok_or_else(|| {
                        format!(
                            "{}: request {}: expect_header '{name}: {value}' is not a valid header",
                            path.display(),
                            i + 1
                        )
                    })?;
            }
        }
        s.snapshot
            .check()
            .map_err(|e| format!("{}: {e}", path.display()))?;
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
    /// Headers the response must carry (empty on variants that do not authorize).
    pub expect_headers: Vec<(http::HeaderName, HeaderValue)>,
    pub expect_body: Option<Bytes>,
}

impl Entry {
    /// Whether a response is what the scenario expects.
    pub fn accepts(&self, status: u16, headers: &http::HeaderMap, body: &[u8]) -> bool {
        self.expect.matches(status)
            && self
                .expect_headers
                .iter()
                .all(|(n, v)| headers.get(n) == Some(v))
            && self.expect_body.as_ref().is_none_or(|needle| {
                needle.is_empty() || body.windows(needle.len()).any(|w| w == needle.as_ref())
            })
    }
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
            let mut expect_headers = Vec::new();
            let mut expect_body = None;
            if authorizing {
                for (name, value) in &r.expect_header {
                    let n = http::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|e| format!("expect_header '{name}': {e}"))?;
                    let v = HeaderValue::from_str(value)
                        .map_err(|e| format!("expect_header '{name}': {e}"))?;
                    expect_headers.push((n, v));
                }
                expect_body = r.expect_body_contains.clone().map(Bytes::from);
            }
            let body = match &r.body {
                Some(b) => Some(Bytes::from(expand_body(b)?)),
                None => None,
            };
            total += u64::from(r.weight);
            cumulative.push(total);
            entries.push(Entry {
                method,
                path: PathTemplate::parse(&r.path)?,
                credentials,
                body,
                expect,
                expect_headers,
                expect_body,
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
        assert!(all.len() >= 7);
        // The 10,000-item body: every id once, in order, within the default body limits
        // (4 MiB, 10,000 items).
        let big = all.iter().find(|s| s.name == "bulk-trim-10k").unwrap();
        let body = expand_body(big.requests[0].body.as_ref().unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let ids = v["ids"].as_array().unwrap();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().zip(1u64..).all(|(id, n)| id.as_u64() == Some(n)));
        assert!(body.len() < 4 * 1024 * 1024);
    }

    #[test]
    fn bodies_expand_ranges_once() {
        assert_eq!(
            expand_body(r#"{"ids":[{{3..6}}],"x":"{{1..1}}"}"#).unwrap(),
            r#"{"ids":[3,4,5,6],"x":"1"}"#
        );
        // Single braces are JSON, left alone.
        assert_eq!(
            expand_body(r#"{"a":{"b":[1]}}"#).unwrap(),
            r#"{"a":{"b":[1]}}"#
        );
        for bad in [
            "[{{1..}}]",
            "[{{5..1}}]",
            "[{{1..3]",
            "[{{a..b}}]",
            "[{{0..1000000}}]",
        ] {
            assert!(expand_body(bad).is_err(), "{bad}");
        }
        assert!(expand_body("[{{0..999999}}]").is_ok());
    }

    fn scenario(text: &str) -> Result<Scenario, String> {
        let dir = std::env::temp_dir().join(format!("permgate-bench-scn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{}.toml", fastrand::u64(..)));
        std::fs::write(&file, text).unwrap();
        let s = Scenario::load(&file);
        let _ = std::fs::remove_file(&file);
        s
    }

    const BULK: &str = r#"
name = "b"
[population]
team_rep = 2
[[snapshot.roles]]
id = "team_rep"
permissions = ["lead.reassign@team"]
[snapshot.teams]
team_rep = ["east"]
[[snapshot.records]]
type = "lead"
ids = "1..5"
owners = ["u-a", "u-b"]
[[request]]
method = "POST"
path = "/api/v1/leads/bulk-reassign"
role = "team_rep"
body = '{"ids":[{{1..5}}]}'
expect = 200
expect_header = { "x-permgate-removed-count" = "2" }
expect_body_contains = '"updated"'
"#;

    #[test]
    fn snapshot_additions_merge() {
        let a = scenario(BULK).unwrap();
        let spec = SnapshotSpec::merged(&[a.clone(), a.clone()]).unwrap();
        assert_eq!(spec.roles.len(), 1);
        assert_eq!(spec.teams["team_rep"], vec!["east".to_string()]);
        let owners = spec.owners().unwrap();
        assert_eq!(owners.len(), 5);
        assert_eq!(owners[&("lead".to_string(), 1)], "u-a");
        assert_eq!(owners[&("lead".to_string(), 4)], "u-b");
        assert_eq!(owners[&("lead".to_string(), 5)], "u-a");

        // The same role id with other permissions, or a record with two owners: refused.
        let mut b = a.clone();
        b.snapshot.roles[0].permissions.push("lead.view".into());
        assert!(SnapshotSpec::merged(&[a.clone(), b]).is_err());
        let mut c = a.clone();
        c.snapshot.records[0].owners.reverse();
        let both = SnapshotSpec::merged(&[a, c]).unwrap();
        assert!(both.owners().unwrap_err().contains("owned by both"));

        assert!(scenario(&BULK.replace(r#"["u-a", "u-b"]"#, "[]")).is_err());
        assert!(scenario(&BULK.replace(r#"ids = "1..5""#, r#"ids = "5..1""#)).is_err());
        assert!(scenario(&BULK.replace("{{1..5}}", "{{1..x}}")).is_err());
        assert!(scenario(&BULK.replace("x-permgate-removed-count", "bad name")).is_err());
    }

    struct NoCreds;
    impl Credentials for NoCreds {
        fn for_role(&self, _: &str, n: usize) -> Result<Vec<HeaderValue>, String> {
            Ok(vec![HeaderValue::from_static("Bearer x"); n])
        }
        fn for_user(&self, _: &str) -> Result<HeaderValue, String> {
            Ok(HeaderValue::from_static("Bearer x"))
        }
    }

    #[test]
    fn header_and_body_expectations_only_where_authorizing() {
        let s = scenario(BULK).unwrap();
        let authz = Plan::build(&s, &NoCreds, true).unwrap();
        let plain = Plan::build(&s, &NoCreds, false).unwrap();
        assert_eq!(
            authz.entries[0].body.as_deref(),
            Some(&br#"{"ids":[1,2,3,4,5]}"#[..])
        );
        let mut trimmed = http::HeaderMap::new();
        trimmed.insert("x-permgate-removed-count", HeaderValue::from_static("2"));
        let mut other = http::HeaderMap::new();
        other.insert("x-permgate-removed-count", HeaderValue::from_static("0"));
        let body = br#"{"updated":[1,3,5]}"#;
        let e = &authz.entries[0];
        assert!(e.accepts(200, &trimmed, body));
        assert!(!e.accepts(200, &other, body));
        assert!(!e.accepts(200, &http::HeaderMap::new(), body));
        assert!(!e.accepts(200, &trimmed, b"{}"));
        assert!(!e.accepts(403, &trimmed, body));
        // Not authorizing: status only (below 500 by default).
        let p = &plain.entries[0];
        assert!(p.accepts(200, &http::HeaderMap::new(), b""));
        assert!(!p.accepts(502, &http::HeaderMap::new(), b""));
    }
}
