//! Issue 16 item 3: credentials the CRM checks itself. Per kind, a verified API key is
//! stripped (the default) or forwarded as sent (`[identity.api_keys] forward = "forward"`); a
//! route with `credentials = "passthrough"` forwards the caller's credential untouched and
//! unverified; a key that belongs to a service principal (the snapshot's `services`) is decided
//! by the service's roles, and the CRM sees the service's id. Through the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

mod common;

use common::*;

/// A service principal's key (its SHA-256 is in the snapshot, never the key).
const SERVICE_KEY: &str = "svc-sync-key-0123456789abcdef";

/// The demo snapshot with a service principal holding the `data_analyst` role.
fn snapshot_with_service() -> String {
    let mut v: serde_json::Value = serde_json::from_str(permgate::demo::DEMO_SNAPSHOT).unwrap();
    let digest = hex::encode(permgate::identity::api_key_digest(SERVICE_KEY));
    v["services"] = serde_json::json!([
        { "id": "svc-sync", "name": "Nightly sync", "roles": ["data_analyst"],
          "api_keys": [format!("sha256:{digest}")] }
    ]);
    v.to_string()
}

/// The demo config, API keys forwarded when `forward`, plus a passthrough route
/// (`POST /api/v1/auth/pat-exchange`, only the CRM can check what it is sent).
fn config(forward: bool) -> String {
    let text = demo_config_text();
    let text = if forward {
        text.replace(
            "[identity.api_keys]\n",
            "[identity.api_keys]\nforward = \"forward\"\n",
        )
    } else {
        text
    };
    format!(
        "{text}\n[[route]]\nname = \"auth.pat_exchange\"\nmethods = [\"POST\"]\n\
         path = \"/api/v1/auth/pat-exchange\"\ncredentials = \"passthrough\"\n"
    )
}

async fn harness(forward: bool) -> Harness {
    Harness::with_config_text(
        &config(forward),
        &[("snapshot.json", &snapshot_with_service())],
    )
    .await
}

/// The CRM's last request.
fn last(h: &Harness) -> permgate_sample_crm::RecordedRequest {
    h.received().pop().expect("the CRM received the call")
}

async fn get(h: &Harness, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = client().get(h.url(path));
    for (n, v) in headers {
        r = r.header(*n, *v);
    }
    r.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_api_key_reaches_the_crm_as_sent_and_forged_identity_does_not() {
    let h = harness(true).await;
    // In its own header.
    h.clear();
    let r = get(
        &h,
        "/api/v1/analytics",
        &[
            ("x-api-key", DEMO_ANALYST_API_KEY),
            ("x-permgate-user", "u-admin"),
            ("x_permgate_user", "u-admin"),
            ("x-permgate-principal", "service"),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    let got = last(&h);
    assert_eq!(recorded_header(&got, "x-api-key"), [DEMO_ANALYST_API_KEY]);
    assert_eq!(recorded_header(&got, "x-permgate-user"), ["u-da"]);
    assert!(recorded_header(&got, "x_permgate_user").is_empty());
    assert!(recorded_header(&got, "x-permgate-principal").is_empty());
    assert!(recorded_header(&got, "authorization").is_empty());
    // In Authorization.
    h.clear();
    let auth = format!("Bearer {DEMO_ANALYST_API_KEY}");
    let r = get(&h, "/api/v1/analytics", &[("authorization", &auth)]).await;
    assert_eq!(r.status(), 200);
    let got = last(&h);
    assert_eq!(recorded_header(&got, "authorization"), [auth.as_str()]);
    assert_eq!(recorded_header(&got, "x-permgate-user"), ["u-da"]);
    // A key that is not valid is still refused, and nothing reaches the CRM.
    h.clear();
    let r = get(&h, "/api/v1/analytics", &[("x-api-key", "not-a-key")]).await;
    assert_eq!(r.status(), 401);
    assert!(h.received().is_empty());
    // A disguised spelling of the key header is no second credential that slips through.
    h.clear();
    let r = get(
        &h,
        "/api/v1/analytics",
        &[
            ("x-api-key", DEMO_ANALYST_API_KEY),
            ("x_api_key", "someone-elses-key"),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    let got = last(&h);
    assert_eq!(recorded_header(&got, "x-api-key"), [DEMO_ANALYST_API_KEY]);
    assert!(recorded_header(&got, "x_api_key").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_verified_api_key_is_stripped() {
    let h = harness(false).await;
    let auth = format!("Bearer {DEMO_ANALYST_API_KEY}");
    for headers in [
        [("x-api-key", DEMO_ANALYST_API_KEY)],
        [("authorization", auth.as_str())],
    ] {
        h.clear();
        let r = get(&h, "/api/v1/analytics", &headers).await;
        assert_eq!(r.status(), 200);
        let got = last(&h);
        assert!(recorded_header(&got, "x-api-key").is_empty());
        assert!(recorded_header(&got, "authorization").is_empty());
        assert_eq!(recorded_header(&got, "x-permgate-user"), ["u-da"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passthrough_route_forwards_an_unknown_bearer_untouched_and_no_other_route_does() {
    let h = harness(false).await;
    let c = client();
    let pat = "Bearer crm-pat-9f8e7d6c5b4a";
    h.clear();
    let r = c
        .post(h.url("/api/v1/auth/pat-exchange"))
        .header("authorization", pat)
        .header("x-api-key", "crm-own-key")
        .header("x-permgate-user", "u-admin")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    // The sample CRM has no such endpoint and answers its own 404: the call reached it.
    assert_eq!(r.status(), 404);
    let got = last(&h);
    assert_eq!(got.target, "/api/v1/auth/pat-exchange");
    assert_eq!(recorded_header(&got, "authorization"), [pat]);
    assert_eq!(recorded_header(&got, "x-api-key"), ["crm-own-key"]);
    assert!(
        recorded_header(&got, "x-permgate-user").is_empty(),
        "no identity on a passthrough route, and no forged one"
    );
    // Every other route still refuses the same bearer.
    for (method, path) in [
        ("GET", "/api/v1/analytics"),
        ("GET", "/api/v1/customers"),
        ("POST", "/api/v1/auth/pat-exchange/x"),
    ] {
        h.clear();
        let r = c
            .request(method.parse().unwrap(), h.url(path))
            .header("authorization", pat)
            .send()
            .await
            .unwrap();
        assert!(
            r.status() == 401 || r.status() == 404,
            "{method} {path}: {}",
            r.status()
        );
        assert!(h.received().is_empty(), "{method} {path} reached the CRM");
    }
    let r = get(&h, "/api/v1/analytics", &[("authorization", pat)]).await;
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_principal_is_decided_by_its_roles_and_the_crm_sees_its_id() {
    let h = harness(false).await;
    // Allowed by its role (data_analyst: analytics).
    h.clear();
    let r = get(&h, "/api/v1/analytics", &[("x-api-key", SERVICE_KEY)]).await;
    assert_eq!(r.status(), 200);
    let id = r
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let got = last(&h);
    assert_eq!(recorded_header(&got, "x-permgate-user"), ["svc-sync"]);
    assert_eq!(recorded_header(&got, "x-permgate-principal"), ["service"]);
    assert_eq!(recorded_header(&got, "x-permgate-roles"), ["data_analyst"]);
    assert!(
        recorded_header(&got, "x-api-key").is_empty(),
        "stripped by default"
    );
    // Denied where its roles do not reach.
    h.clear();
    let r = client()
        .delete(h.url("/api/v1/customers/1"))
        .header("x-api-key", SERVICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(h.received().is_empty());
    // /_permgate/me says what it is.
    let me: serde_json::Value = get(&h, "/_permgate/me", &[("x-api-key", SERVICE_KEY)])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["user"], "svc-sync");
    assert_eq!(me["principal"], "service");
    assert_eq!(me["roles"], serde_json::json!(["data_analyst"]));
    // A person stays a user there, and gets no principal header upstream.
    let me: serde_json::Value = get(&h, "/_permgate/me", &[("authorization", &bearer("u-da"))])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["principal"], "user");
    h.clear();
    let r = get(
        &h,
        "/api/v1/analytics",
        &[("authorization", &bearer("u-da"))],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(recorded_header(&last(&h), "x-permgate-principal").is_empty());
    // Reached by key only: a token naming the service's id is an unknown user.
    h.clear();
    let r = get(
        &h,
        "/api/v1/analytics",
        &[("authorization", &bearer("svc-sync"))],
    )
    .await;
    assert_eq!(r.status(), 401);
    assert!(h.received().is_empty());
    // The decision log names the principal.
    let mut line = None;
    for _ in 0..100 {
        line = h
            .log_text()
            .lines()
            .find(|l| l.contains(&format!("\"request_id\":\"{id}\"")))
            .map(str::to_string);
        if line.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let v: serde_json::Value = serde_json::from_str(&line.expect("logged")).unwrap();
    assert_eq!(v["user"], "svc-sync");
    assert_eq!(v["principal"], "service");
    assert_eq!(v["decision"], "allow");
}

#[test]
fn a_passthrough_route_with_a_permission_or_checks_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("snapshot.json"), snapshot_with_service()).unwrap();
    // A valid one: check-config names it as unchecked, and counts the service apart.
    let path = dir.path().join("permgate.toml");
    std::fs::write(&path, config(true)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_permgate"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("route 'auth.pat_exchange'") && text.contains("NOT verified"),
        "{text}"
    );
    assert!(text.contains("(and 1 service principal(s))"), "{text}");
    assert!(text.contains("api_keys: forwarded"), "{text}");
    for (extra, expect) in [
        (
            "permission = \"company.access_analytics\"\n",
            "takes no 'permission'",
        ),
        (
            "records = [{ type = \"lead\", id = \"path:id\" }]\n",
            "takes no records",
        ),
    ] {
        let text = format!(
            "{}\n[[route]]\nname = \"pt\"\nmethods = [\"POST\"]\npath = \"/api/v1/pt/{{id}}\"\n\
             credentials = \"passthrough\"\n{extra}",
            demo_config_text()
        );
        let path = dir.path().join("permgate.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_permgate"))
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{extra}: accepted\n{all}");
        assert!(all.contains(expect), "{extra}: {all}");
        assert!(all.contains("permgate.toml:"), "located: {all}");
    }
    // Review finding: unverified credentials go to exact paths only.
    for pattern in ["path = \"/api/v1/pt/{*rest}\"", "regex = '/api/v1/pt/.*'"] {
        let out = check_config_text(&format!(
            "{}\n[[route]]\nname = \"pt\"\nmethods = [\"POST\"]\n{pattern}\n\
             credentials = \"passthrough\"\n",
            demo_config_text()
        ));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{pattern}: {err}");
        assert!(
            err.contains("not a catch-all or a regex"),
            "{pattern}: {err}"
        );
    }
}

/// In allow-list mode (only listed headers reach the CRM) a forwarded key and a passthrough
/// route's credentials still go through; nothing else unlisted does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_credentials_survive_allow_list_mode() {
    let text = config(true).replace(
        "[forward]\n",
        "[forward]\nrequest_headers = \"allow_list\"\n",
    );
    let h = Harness::with_config_text(&text, &[("snapshot.json", &snapshot_with_service())]).await;
    h.clear();
    let r = get(
        &h,
        "/api/v1/analytics",
        &[("x-api-key", DEMO_ANALYST_API_KEY), ("x-unlisted", "1")],
    )
    .await;
    assert_eq!(r.status(), 200);
    let got = last(&h);
    assert_eq!(recorded_header(&got, "x-api-key"), [DEMO_ANALYST_API_KEY]);
    assert!(recorded_header(&got, "x-unlisted").is_empty());
    h.clear();
    let r = client()
        .post(h.url("/api/v1/auth/pat-exchange"))
        .header("authorization", "Bearer crm-pat")
        .header("x-unlisted", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the CRM's own answer");
    let got = last(&h);
    assert_eq!(recorded_header(&got, "authorization"), ["Bearer crm-pat"]);
    assert!(recorded_header(&got, "x-unlisted").is_empty());
}
