//! `permgate explain` and `permgate test`: the live decision code, run offline as a named user.
//!
//! Both call [`crate::policy::decide_as`] — the same canonicalization, route match and permission
//! check the gateway runs — so what they say is what the gateway does (an integration test checks
//! it against the running gateway). Identity is taken as given (`--user`): credentials are the
//! gateway's business, policy is what these tools explain.

use http::Method;
use serde::Deserialize;
use serde_json::json;

use crate::config::{Access, Config};
use crate::policy::{self, decide_as};
use crate::snapshot::Snapshot;

/// A decision and its reasons, as JSON (also rendered as text).
#[derive(Debug, Clone)]
pub struct Explanation {
    pub allowed: bool,
    pub status: u16,
    pub code: String,
    pub json: serde_json::Value,
}

/// Explain one call by `user` (`None`: no credentials), with its JSON body when the route
/// inspects bodies (bulk items trimmed, fields, records in the body).
pub fn explain(
    config: &Config,
    snapshot: &Snapshot,
    method: &str,
    target: &str,
    user: Option<&str>,
) -> Explanation {
    explain_with_body(config, snapshot, method, target, user, None)
}

/// [`explain`] with the request body.
pub fn explain_with_body(
    config: &Config,
    snapshot: &Snapshot,
    method: &str,
    target: &str,
    user: Option<&str>,
    body: Option<&[u8]>,
) -> Explanation {
    explain_in(config, snapshot, method, target, user, None, body)
}

/// [`explain_with_body`] in a tenant (`--tenant`; a `path:` tenant source reads the path as
/// the gateway does, and must agree).
pub fn explain_in(
    config: &Config,
    snapshot: &Snapshot,
    method: &str,
    target: &str,
    user: Option<&str>,
    tenant: Option<&str>,
    body: Option<&[u8]>,
) -> Explanation {
    let Ok(m) = Method::from_bytes(method.as_bytes()) else {
        return Explanation {
            allowed: false,
            status: 400,
            code: "bad_method".into(),
            json: json!({"decision": "deny", "status": 400, "code": "bad_method"}),
        };
    };
    let result = decide_as(config, snapshot, &m, target.as_bytes(), user, tenant);
    // The tenant the call was decided in (the caller's membership's).
    let decided_tenant = match &result {
        Ok(p) => p.caller,
        Err(d) => d.caller,
    }
    .map(|c| snapshot.user(c.user).tenant)
    .filter(|t| *t != crate::snapshot::NO_TENANT)
    .map(|t| snapshot.tenant_id(t).to_string());
    // The body checks the gateway runs on an inspected route, on the given body.
    let mut trimmed: Option<Vec<String>> = None;
    // What a body denial names (the 403 body's `denied_ids` and `fields`).
    let mut denied_ids: Option<Vec<String>> = None;
    let mut denied_fields: Option<Vec<String>> = None;
    let mut denied_assignees: Option<Vec<String>> = None;
    let result = match result {
        Ok(p) => {
            let inspect = p
                .route
                .and_then(|r| policy::route_info(config, r).inspect.as_ref())
                .filter(|i| i.reads_body());
            match (inspect, p.caller) {
                (Some(i), Some(c)) => {
                    match crate::inspect::check_body(
                        snapshot,
                        &config.catalog,
                        c.user,
                        i,
                        body.unwrap_or_default(),
                    ) {
                        Ok(f) => {
                            trimmed = Some(f.removed_ids.iter().map(|x| x.to_string()).collect());
                            Ok(p)
                        }
                        Err(d) => {
                            denied_ids = Some(d.denied_ids.clone());
                            denied_fields = Some(d.fields.clone());
                            denied_assignees = Some(d.denied_assignees.clone());
                            Err(crate::policy::Denied {
                                rejection: d.rejection,
                                route: p.route,
                                user: user.map(Into::into),
                                canonical: Some(p.canonical),
                                caller: p.caller,
                            })
                        }
                    }
                }
                _ => Ok(p),
            }
        }
        Err(d) => Err(d),
    };
    let (route, canonical) = match &result {
        Ok(p) => (p.route, Some(p.canonical.path_and_query())),
        Err(d) => (d.route, d.canonical.as_ref().map(|c| c.path_and_query())),
    };
    let route_json = route.map(|r| {
        let spec = &config.routes.routes()[r];
        json!({
            "name": spec.value.name,
            "declared_at": spec.origin,
            // The `[[resource]]` the route was expanded from (null: a `[[route]]`).
            "resource": spec.value.resource,
            "access": match spec.value.access {
                // Public for permgate; the caller's credentials go to the CRM unverified.
                Access::Public if spec.value.passthrough => "public, credentials passthrough".to_string(),
                Access::Public => "public".to_string(),
                Access::Permission(p) => config.catalog.permission_name(p).to_string(),
            },
        })
    });
    let user_json = user.map(|u| match snapshot.user_index(u) {
        None => json!({"id": u, "known": false}),
        Some(i) => {
            // With tenants: the roles of the membership the call was decided with.
            let i = decided_tenant
                .as_deref()
                .and_then(|t| snapshot.tenant_index(t))
                .and_then(|t| snapshot.member(i, t))
                .unwrap_or(i);
            let rec = snapshot.user(i);
            let grant = snapshot.grant(rec);
            json!({
                "id": u,
                "known": true,
                "disabled": rec.disabled,
                "roles": grant.roles.iter().map(|r| snapshot.role_id(*r)).collect::<Vec<_>>(),
                "permissions": grant.permissions.len(),
            })
        }
    });
    let (allowed, status, code, message, granted_by) = match &result {
        Ok(p) => {
            let granted = match (p.caller, route) {
                (Some(c), Some(r)) => match policy::route_info(config, r).access {
                    Access::Permission(perm) => {
                        policy::granting_role(config, snapshot, c.user, r, perm, &p.canonical)
                            .map(String::from)
                    }
                    Access::Public => None,
                },
                _ => None,
            };
            (true, 200, "allow".to_string(), None, granted)
        }
        Err(d) => (
            false,
            d.rejection.status,
            d.rejection.code.to_string(),
            Some(d.rejection.message().into_owned()),
            None,
        ),
    };
    Explanation {
        allowed,
        status,
        code: code.clone(),
        json: json!({
            "request": {"method": method, "target": target, "canonical": canonical},
            "tenant": decided_tenant.as_deref().or(tenant),
            "route": route_json,
            "user": user_json,
            "decision": if allowed { "allow" } else { "deny" },
            "status": if allowed { None } else { Some(status) },
            "code": code,
            "message": message,
            "granted_by": granted_by,
            "trimmed": trimmed,
            "denied_ids": denied_ids,
            "fields": denied_fields,
            "denied_assignees": denied_assignees,
            "snapshot_version": snapshot.version,
            "config_hash": config.hash,
        }),
    }
}

impl Explanation {
    /// The explanation for a person.
    pub fn text(&self) -> String {
        let j = &self.json;
        let mut s = format!(
            "request:    {} {}\n",
            j["request"]["method"].as_str().unwrap_or(""),
            j["request"]["target"].as_str().unwrap_or("")
        );
        match j["request"]["canonical"].as_str() {
            Some(c) => s.push_str(&format!("canonical:  {c}\n")),
            None => s.push_str("canonical:  (refused before a canonical path was decided)\n"),
        }
        if let Some(t) = j["tenant"].as_str() {
            s.push_str(&format!("tenant:     {t}\n"));
        }
        match j["route"].as_object() {
            Some(r) => s.push_str(&format!(
                "route:      {} (declared at {})\nneeds:      {}\n",
                r["name"].as_str().unwrap_or(""),
                r["declared_at"].as_str().unwrap_or(""),
                r["access"].as_str().unwrap_or("")
            )),
            None => s.push_str("route:      none (deny by default)\n"),
        }
        match j["user"].as_object() {
            Some(u) if u["known"] == true => s.push_str(&format!(
                "user:       {} (roles: {}{})\n",
                u["id"].as_str().unwrap_or(""),
                u["roles"]
                    .as_array()
                    .map(|r| r
                        .iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default(),
                if u["disabled"] == true {
                    "; disabled"
                } else {
                    ""
                }
            )),
            Some(u) => s.push_str(&format!(
                "user:       {} (not in the snapshot)\n",
                u["id"].as_str().unwrap_or("")
            )),
            None => s.push_str("user:       none (no credentials)\n"),
        }
        if self.allowed {
            match j["granted_by"].as_str() {
                Some(r) => s.push_str(&format!("decision:   ALLOW — granted by role '{r}'\n")),
                None => s.push_str("decision:   ALLOW — public route\n"),
            }
            if let Some(t) = j["trimmed"].as_array() {
                let ids: Vec<&str> = t.iter().filter_map(|x| x.as_str()).collect();
                s.push_str(&format!(
                    "trimmed:    {} item(s) removed before forwarding{}{}\n",
                    ids.len(),
                    if ids.is_empty() { "" } else { ": " },
                    ids.join(", ")
                ));
            }
        } else {
            s.push_str(&format!(
                "decision:   DENY {} {} — {}\n",
                self.status,
                self.code,
                j["message"].as_str().unwrap_or("")
            ));
        }
        s.push_str(&format!(
            "policy:     snapshot {}, config {}\n",
            j["snapshot_version"].as_str().unwrap_or(""),
            j["config_hash"].as_str().unwrap_or("")
        ));
        s
    }
}

/// A file of expected decisions for `permgate test`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// The config to test, relative to the case file.
    pub config: String,
    #[serde(rename = "case")]
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// The caller; omit for a call without credentials.
    #[serde(default)]
    pub user: Option<String>,
    /// The call's tenant (with `[tenants]`; a `path:` source also reads the path).
    #[serde(default)]
    pub tenant: Option<String>,
    pub method: String,
    pub path: String,
    /// `allow` or `deny`.
    pub expect: String,
    /// For a denial: the error code expected (e.g. `forbidden`).
    #[serde(default)]
    pub code: Option<String>,
    /// For a denial: the status expected (e.g. 403).
    #[serde(default)]
    pub status: Option<u16>,
    /// The request body (JSON text), checked as the gateway checks it on an inspected route
    /// (bulk trimming, fields, records in the body).
    #[serde(default)]
    pub body: Option<String>,
    /// For an allowed bulk call: the item ids expected to be removed before forwarding
    /// (`[]`: none), in any order.
    #[serde(default)]
    pub trimmed: Option<Vec<String>>,
    /// For a body denial: the record ids the 403 names, in any order.
    #[serde(default)]
    pub denied_ids: Option<Vec<String>>,
    /// For a field denial: the fields the 403 names, in any order.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// For a new-owner denial: the new owners the 403 names, in any order.
    #[serde(default)]
    pub denied_assignees: Option<Vec<String>>,
}

/// The strings of a JSON array, sorted (`None` when it is not an array).
fn sorted_strings(v: &serde_json::Value) -> Option<Vec<String>> {
    let mut out: Vec<String> = v
        .as_array()?
        .iter()
        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
        .collect();
    out.sort();
    Some(out)
}

/// Run the cases; each mismatch is described.
pub fn run_cases(config: &Config, snapshot: &Snapshot, cases: &[Case]) -> Vec<Result<(), String>> {
    cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let e = explain_in(
                config,
                snapshot,
                &c.method,
                &c.path,
                c.user.as_deref(),
                c.tenant.as_deref(),
                c.body.as_deref().map(str::as_bytes),
            );
            let who = c.user.as_deref().unwrap_or("(anonymous)");
            let got = if e.allowed { "allow" } else { "deny" };
            if c.expect != "allow" && c.expect != "deny" {
                return Err(format!(
                    "case[{i}]: expect must be 'allow' or 'deny', not '{}'",
                    c.expect
                ));
            }
            if got != c.expect {
                return Err(format!(
                    "case[{i}] {who} {} {}: expected {}, got {got} ({})",
                    c.method, c.path, c.expect, e.code
                ));
            }
            let here = format!("case[{i}] {who} {} {}", c.method, c.path);
            if let Some(code) = c.code.as_ref().filter(|_| !e.allowed) {
                if code != &e.code {
                    return Err(format!("{here}: expected code {code}, got {}", e.code));
                }
            }
            if let Some(status) = c.status.filter(|_| !e.allowed) {
                if status != e.status {
                    return Err(format!(
                        "{here}: expected status {status}, got {}",
                        e.status
                    ));
                }
            }
            for (key, want) in [
                ("trimmed", &c.trimmed),
                ("denied_ids", &c.denied_ids),
                ("fields", &c.fields),
                ("denied_assignees", &c.denied_assignees),
            ] {
                let Some(want) = want else { continue };
                let mut want = want.clone();
                want.sort();
                match sorted_strings(&e.json[key]) {
                    Some(got) if got == want => {}
                    got => {
                        return Err(format!(
                            "{here}: expected {key} {want:?}, got {}",
                            got.map_or("none (no body check ran)".to_string(), |g| format!(
                                "{g:?}"
                            ))
                        ))
                    }
                }
            }
            Ok(())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> (Config, Snapshot) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse("permgate.toml", crate::demo::DEMO_CONFIG, dir.path()).unwrap();
        let snapshot =
            Snapshot::build("snapshot.json", crate::demo::DEMO_SNAPSHOT, &config.catalog).unwrap();
        (config, snapshot)
    }

    #[test]
    fn explains_allow_and_deny() {
        let (c, s) = demo();
        let e = explain(&c, &s, "DELETE", "/api/v1/x/../campaigns/1", Some("u-rep1"));
        assert!(!e.allowed);
        assert_eq!(e.code, "forbidden");
        let t = e.text();
        assert!(t.contains("canonical:  /api/v1/campaigns/1"), "{t}");
        assert!(t.contains("route:      campaigns.delete"), "{t}");
        assert!(t.contains("needs:      campaign.delete"), "{t}");
        assert!(t.contains("roles: sales_rep"), "{t}");
        assert!(t.contains("DENY 403 forbidden"), "{t}");
        let e = explain(&c, &s, "DELETE", "/api/v1/campaigns/1", Some("u-member"));
        assert!(e.allowed);
        assert_eq!(e.json["granted_by"], "campaign_cleaner");
        let e = explain(&c, &s, "GET", "/api/v1/customers%2F1", Some("u-admin"));
        assert_eq!(e.code, "encoded_slash");
        let e = explain(&c, &s, "GET", "/api/v1/customers/1", None);
        assert_eq!(e.code, "missing_credentials");
    }

    #[test]
    fn cases_report_mismatches() {
        let (c, s) = demo();
        let cases: CaseFile = toml::from_str(
            r#"config = "x"
[[case]]
user = "u-rep1"
method = "DELETE"
path = "/api/v1/campaigns/1"
expect = "deny"
code = "forbidden"
[[case]]
user = "u-rep1"
method = "GET"
path = "/api/v1/customers/1"
expect = "deny"
"#,
        )
        .unwrap();
        let r = run_cases(&c, &s, &cases.cases);
        assert!(r[0].is_ok());
        assert!(r[1]
            .as_ref()
            .unwrap_err()
            .contains("expected deny, got allow"));
    }
}
