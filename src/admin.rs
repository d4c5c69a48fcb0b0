//! The admin API, on its own listener (never the traffic port): an [axum] [`Router`] served
//! by hyper's HTTP/1.1 connection loop, like before.
//!
//! | endpoint | auth | what |
//! |---|---|---|
//! | `GET /healthz` | none | the process is up: `200 {"status":"ok"}` |
//! | `GET /readyz` | none | `200` when a usable snapshot is live (and a configured JWKS was fetched once), else `503` (probes can't hold secrets; these reveal nothing) |
//! | `GET /metrics` | none (bearer with `admin.protect_metrics`) | Prometheus text: requests by route/decision/status, latencies, upstream errors, snapshot age, reloads, decision-log drops |
//! | `GET /status` | bearer | config hash, snapshot version and age, counts, counters, last errors |
//! | `POST /explain` | bearer | `{"user","method","path"}` → the decision and its reasons, as `permgate explain --json` |
//! | `POST /reload` | bearer | re-read the config file (like SIGHUP): `200 {"config_hash"}` or `422 {"errors"}` |
//! | `PUT /snapshot` | bearer | replace the snapshot with the body: `200 {"version"}` or `422 {"errors"}` |
//! | `POST /snapshot/changes` | bearer | `{"changes":[…]}` applied to the live snapshot: `200 {"version"}` or `422` |
//!
//! [`router`] is a public router (the probes and `/metrics`, `GET` only) merged with the
//! protected one (`protected_endpoints`), whose token check (`require_token`) is a layer over
//! every route in it *and* its fallback: an endpoint added there is protected without anyone
//! remembering to, and an unknown path without the token is 401, not 404 (nothing about the API
//! is learned without it). Every other method on a public path (`HEAD` included) goes through
//! the same check: 401 without the token, 405 with it. No answer carries an `Allow` header, so
//! a 401 does not tell which methods a path has. `/metrics` is gated per request
//! (`metrics_gate`) rather than placed in one router or the other once: a reload can turn
//! `admin.protect_metrics` on, and it holds from the next request, as a token a reload changes
//! does.
//!
//! Bodies are read with the limits of before (64 KiB for `/explain`, `admin.max_snapshot_mb`
//! for the snapshot endpoints), not through axum's extractors and their default limit.
//!
//! A refused change leaves everything live as it was.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State as With};
use axum::handler::Handler;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, MethodFilter, MethodRouter};
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::json;
use tracing::{info, warn};

use crate::changes::Change;
use crate::live::State;

type Shared = Arc<State>;

fn reply(status: StatusCode, v: serde_json::Value) -> Response {
    let body = serde_json::to_vec(&v).unwrap_or_default();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    reply(status, json!({"error": code, "message": message}))
}

/// Compare in time independent of where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One `Authorization: Bearer <admin token>` header, the token compared in constant time.
fn authorized(admin: Option<&crate::config::Admin>, headers: &HeaderMap) -> bool {
    let Some(admin) = admin else {
        return false;
    };
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return false;
    };
    v.to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.as_bytes(), admin.token.as_bytes()))
}

fn unauthenticated() -> Response {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "the admin API needs 'Authorization: Bearer <admin token>'",
    );
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer"),
    );
    r
}

/// The token check, as a middleware: the layer over the whole protected router (its routes and
/// its fallback) and over the wrong methods of the public paths. The token is the live
/// config's, read per request (a reload that changes it takes effect on the next request).
async fn require_token(With(state): With<Shared>, req: Request, next: Next) -> Response {
    if authorized(state.live().config.admin.as_ref(), req.headers()) {
        next.run(req).await
    } else {
        unauthenticated()
    }
}

/// `GET /metrics`: open like the probes, unless `admin.protect_metrics` (read per request, so a
/// reload that turns it on protects the metrics at once).
async fn metrics_gate(With(state): With<Shared>, req: Request, next: Next) -> Response {
    let admin = state.live().config.admin.clone();
    if admin.as_ref().is_some_and(|a| a.protect_metrics)
        && !authorized(admin.as_ref(), req.headers())
    {
        return unauthenticated();
    }
    next.run(req).await
}

/// Log what the admin API refused or changed (a plain `200` to a `GET` is a probe or a read).
async fn log(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    if resp.status() != StatusCode::OK || method != Method::GET {
        info!("admin {method} {path} → {}", resp.status().as_u16());
    }
    resp
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint")
}

async fn wrong_method() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "wrong method for this endpoint",
    )
}

/// One endpoint: `handler` answers `method`; every other method gets `wrong` — `HEAD` too
/// (axum would answer it with the `GET` handler) — and no answer gets an `Allow` header
/// (`any` skips it), so a 401 says nothing about which methods a path has.
fn only<H, T, W, U>(method: MethodFilter, handler: H, wrong: W) -> MethodRouter<Shared>
where
    H: Handler<T, Shared>,
    W: Handler<U, Shared>,
    T: 'static,
    U: 'static,
{
    any(wrong.clone()).head(wrong).on(method, handler)
}

/// The admin API: `protected_endpoints` behind the token, merged with the public ones.
pub fn router(state: Shared) -> Router {
    assemble(state, protected_endpoints())
}

/// Every endpoint that needs the token. An endpoint added here is behind it without anything
/// else to do: [`assemble`] lays the check over this whole router, and over its fallback.
fn protected_endpoints() -> Router<Shared> {
    Router::new()
        .route("/status", only(MethodFilter::GET, status, wrong_method))
        .route("/explain", only(MethodFilter::POST, explain, wrong_method))
        .route("/reload", only(MethodFilter::POST, reload, wrong_method))
        .route(
            "/snapshot",
            only(MethodFilter::PUT, put_snapshot, wrong_method),
        )
        .route(
            "/snapshot/changes",
            only(MethodFilter::POST, snapshot_changes, wrong_method),
        )
}

/// Public: `GET /healthz`, `GET /readyz`, `GET /metrics` (behind [`metrics_gate`]). Everything
/// else — `protected`'s endpoints, every other method on a public path and every unknown path —
/// passes [`require_token`] before it is answered.
fn assemble(state: Shared, protected: Router<Shared>) -> Router {
    let token = middleware::from_fn_with_state(state.clone(), require_token);
    // A wrong method on a public path is refused like an unknown path: the token first.
    let guarded_wrong = wrong_method.layer(token.clone());
    let public = Router::new()
        .route(
            "/healthz",
            only(MethodFilter::GET, healthz, guarded_wrong.clone()),
        )
        .route(
            "/readyz",
            only(MethodFilter::GET, readyz, guarded_wrong.clone()),
        )
        .route(
            "/metrics",
            only(MethodFilter::GET, metrics, guarded_wrong)
                .route_layer(middleware::from_fn_with_state(state.clone(), metrics_gate)),
        );
    let protected = protected
        .fallback(not_found)
        // After the fallback, so it wraps it too (an unknown path is 401 without the token).
        .layer(token);
    public
        .merge(protected)
        .layer(middleware::from_fn(log))
        .with_state(state)
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    match Limited::new(body, limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the body is over admin.max_snapshot_mb",
        )),
        Err(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "the body could not be read",
        )),
    }
}

/// `admin.max_snapshot_mb`, in bytes: the limit of the snapshot endpoints' bodies.
fn snapshot_limit(state: &State) -> usize {
    state
        .live()
        .config
        .admin
        .as_ref()
        .map_or(0, |a| a.max_snapshot_bytes)
}

/// Run a blocking build off the async thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

fn outcome(r: Option<Result<String, Vec<String>>>, key: &str, code: &str) -> Response {
    match r {
        Some(Ok(v)) => reply(StatusCode::OK, json!({ key: v })),
        Some(Err(errors)) => reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": code, "message": "refused; the live state is unchanged", "errors": errors}),
        ),
        None => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the build task failed",
        ),
    }
}

async fn healthz() -> Response {
    reply(StatusCode::OK, json!({"status": "ok"}))
}

async fn readyz(With(state): With<Shared>) -> Response {
    let ready = state.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    reply(status, json!({"ready": ready, "stale": state.is_stale()}))
}

async fn metrics(With(state): With<Shared>) -> Response {
    let mut r = Response::new(Body::from(state.render_metrics()));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

async fn status(With(state): With<Shared>) -> Response {
    reply(StatusCode::OK, state.status())
}

async fn explain(With(state): With<Shared>, body: Body) -> Result<Response, Response> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Ask {
        #[serde(default)]
        user: Option<String>,
        method: String,
        path: String,
        #[serde(default)]
        body: Option<String>,
    }
    let body = read_body(body, 64 * 1024).await?;
    let ask = serde_json::from_slice::<Ask>(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()))?;
    let live = state.live();
    let Some(s) = &live.snapshot else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "no snapshot is loaded",
        ));
    };
    Ok(reply(
        StatusCode::OK,
        crate::explain::explain_with_body(
            &live.config,
            s,
            &ask.method,
            &ask.path,
            ask.user.as_deref(),
            ask.body.as_deref().map(str::as_bytes),
        )
        .json,
    ))
}

async fn reload(With(state): With<Shared>) -> Response {
    outcome(
        blocking(move || state.reload_config("admin")).await,
        "config_hash",
        "config_refused",
    )
}

async fn put_snapshot(With(state): With<Shared>, body: Body) -> Result<Response, Response> {
    let body = read_body(body, snapshot_limit(&state)).await?;
    let text = String::from_utf8(body.to_vec()).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "the snapshot is not UTF-8",
        )
    })?;
    Ok(outcome(
        blocking(move || state.replace_snapshot(&text, "admin")).await,
        "version",
        "snapshot_refused",
    ))
}

async fn snapshot_changes(With(state): With<Shared>, body: Body) -> Result<Response, Response> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Batch {
        changes: Vec<Change>,
    }
    let body = read_body(body, snapshot_limit(&state)).await?;
    let batch = serde_json::from_slice::<Batch>(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_changes", &e.to_string()))?;
    Ok(outcome(
        blocking(move || state.apply_changes(&batch.changes, "admin")).await,
        "version",
        "changes_refused",
    ))
}

/// Serve the admin API on `listener` until the process ends: one hyper HTTP/1.1 connection
/// per accepted socket, each request handed to the [`router`].
pub async fn serve(state: Arc<State>, listener: tokio::net::TcpListener) {
    let app = router(state);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("admin accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            // A `Router` is always ready: calling a clone is a oneshot.
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    tower_service::Service::call(&mut app.clone(), req)
                });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
            {
                warn!("admin connection error: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    const TOKEN: &str = "unit-admin-token-0123456789";

    /// A gateway state from the demo config and snapshot, with an `[admin]` section.
    fn state(admin_extra: &str) -> (tempfile::TempDir, Shared) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("snapshot.json"), crate::demo::DEMO_SNAPSHOT).unwrap();
        write_config(&dir, TOKEN, admin_extra);
        let state = State::load(
            &dir.path().join("permgate.toml"),
            crate::live::Overrides::default(),
        )
        .unwrap();
        (dir, Arc::new(state))
    }

    fn write_config(dir: &tempfile::TempDir, token: &str, admin_extra: &str) {
        let text = format!(
            "{}\n[decision_log]\ntarget = \"off\"\n\n[admin]\nlisten = \"127.0.0.1:9901\"\ntoken = \"{token}\"\n{admin_extra}",
            crate::demo::DEMO_CONFIG
        );
        std::fs::write(dir.path().join("permgate.toml"), text).unwrap();
    }

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    }

    impl Answer {
        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    /// One request through the router, in memory.
    async fn call(app: &Router, method: &str, path: &str, auth: &[&str], body: &str) -> Answer {
        let mut req = http::Request::builder().method(method).uri(path);
        for a in auth {
            req = req.header(http::header::AUTHORIZATION, *a);
        }
        let req = req.body(Body::from(body.to_owned())).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    fn bearer() -> String {
        format!("Bearer {TOKEN}")
    }

    const EXPLAIN: &str = r#"{"user":"u-admin","method":"GET","path":"/api/v1/customers/1"}"#;

    /// Every method and path that is not `GET` on a probe (or on `/metrics` when it is open).
    const PROTECTED: [(&str, &str, &str); 17] = [
        ("GET", "/status", ""),
        ("POST", "/explain", EXPLAIN),
        ("POST", "/reload", ""),
        ("PUT", "/snapshot", "{}"),
        ("POST", "/snapshot/changes", r#"{"changes":[]}"#),
        ("GET", "/explain", ""),
        ("HEAD", "/status", ""),
        ("PATCH", "/snapshot", ""),
        ("GET", "/no-such-endpoint", ""),
        ("GET", "/", ""),
        ("GET", "/healthz/", ""),
        ("GET", "/status/", ""),
        ("POST", "/healthz", ""),
        ("HEAD", "/healthz", ""),
        ("PURGE", "/readyz", ""),
        ("DELETE", "/metrics", ""),
        ("OPTIONS", "/metrics", ""),
    ];

    fn assert_unauthenticated(a: &Answer, what: &str) {
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(a.headers["www-authenticate"], "Bearer", "{what}");
        // Nothing about the path is learned: not which methods it has.
        assert!(a.headers.get(http::header::ALLOW).is_none(), "{what}");
        // (An answer to HEAD has no body.)
        if !what.starts_with("HEAD") {
            assert_eq!(a.json()["error"], "unauthenticated", "{what}");
        }
    }

    #[tokio::test]
    async fn the_probes_and_metrics_are_open() {
        let (_dir, state) = state("");
        let app = router(state);
        let a = call(&app, "GET", "/healthz", &[], "").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.json(), json!({"status": "ok"}));
        assert_eq!(a.headers["content-type"], "application/json");
        let a = call(&app, "GET", "/readyz", &[], "").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.json(), json!({"ready": true, "stale": false}));
        let a = call(&app, "GET", "/metrics?x=1", &[], "").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.headers["content-type"], "text/plain; version=0.0.4");
        assert!(std::str::from_utf8(&a.body)
            .unwrap()
            .contains("permgate_requests_total"));
        // A token changes nothing for them.
        let a = call(&app, "GET", "/healthz", &["Bearer nonsense"], "").await;
        assert_eq!(a.status, StatusCode::OK);
    }

    /// Without a token, with a wrong one, with the bare token, with a lower-case scheme or two
    /// headers: 401 before anything is routed — unknown paths and wrong methods included.
    #[tokio::test]
    async fn everything_else_needs_the_token_before_it_is_routed() {
        let (_dir, state) = state("");
        let app = router(state);
        let good = bearer();
        let wrong = format!("Bearer {}0", &TOKEN[..TOKEN.len() - 1]);
        let lower = format!("bearer {TOKEN}");
        let auths: [&[&str]; 6] = [
            &[],
            &[&wrong],
            &[TOKEN],
            &[&lower],
            &[&good, &good],
            &["Bearer "],
        ];
        for (method, path, body) in PROTECTED {
            for auth in auths {
                let a = call(&app, method, path, auth, body).await;
                assert_unauthenticated(&a, &format!("{method} {path} with {auth:?}"));
            }
        }
    }

    /// With the token: the endpoints answer, an unknown path is 404 and a wrong method 405
    /// (JSON, no `Allow` header, as before the router).
    #[tokio::test]
    async fn with_the_token_the_api_routes() {
        let (_dir, state) = state("");
        let app = router(state);
        let auth = bearer();
        let a = call(&app, "GET", "/status", &[&auth], "").await;
        assert_eq!(a.status, StatusCode::OK);
        let v = a.json();
        assert_eq!(v["ready"], true);
        assert_eq!(v["snapshot"]["users"], 9);
        let a = call(&app, "POST", "/explain", &[&auth], EXPLAIN).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.json()["code"], "allow");
        let a = call(&app, "POST", "/snapshot/changes", &[&auth], "{}").await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert_eq!(a.json()["error"], "bad_changes");
        for (method, path) in [
            ("GET", "/no-such-endpoint"),
            ("GET", "/"),
            ("GET", "/healthz/"),
        ] {
            let a = call(&app, method, path, &[&auth], "").await;
            assert_eq!(a.status, StatusCode::NOT_FOUND, "{method} {path}");
            assert_eq!(a.json()["error"], "not_found");
        }
        for (method, path) in [
            ("POST", "/healthz"),
            ("HEAD", "/healthz"),
            ("DELETE", "/metrics"),
            ("PURGE", "/readyz"),
            ("GET", "/explain"),
            ("HEAD", "/status"),
            ("PATCH", "/snapshot"),
            ("GET", "/snapshot/changes"),
        ] {
            let a = call(&app, method, path, &[&auth], "").await;
            assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(
                a.headers.get(http::header::ALLOW).is_none(),
                "{method} {path}"
            );
            if method != "HEAD" {
                assert_eq!(a.json()["error"], "method_not_allowed", "{method} {path}");
            }
        }
    }

    #[tokio::test]
    async fn bodies_keep_their_limits() {
        let (_dir, state) = state("max_snapshot_mb = 1\n");
        let app = router(state);
        let auth = bearer();
        let big = format!(
            r#"{{"user":"{}","method":"GET","path":"/"}}"#,
            "u".repeat(64 * 1024)
        );
        let a = call(&app, "POST", "/explain", &[&auth], &big).await;
        assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(a.json()["error"], "too_large");
        let huge = " ".repeat((1 << 20) + 1);
        for (method, path) in [("PUT", "/snapshot"), ("POST", "/snapshot/changes")] {
            let a = call(&app, method, path, &[&auth], &huge).await;
            assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{method} {path}");
        }
    }

    #[tokio::test]
    async fn protect_metrics_puts_metrics_behind_the_token() {
        let (_dir, state) = state("protect_metrics = true\n");
        let app = router(state);
        let a = call(&app, "GET", "/metrics", &[], "").await;
        assert_unauthenticated(&a, "GET /metrics");
        let a = call(&app, "GET", "/metrics", &["Bearer nonsense"], "").await;
        assert_unauthenticated(&a, "GET /metrics with a wrong token");
        let a = call(&app, "GET", "/metrics", &[&bearer()], "").await;
        assert_eq!(a.status, StatusCode::OK);
        for probe in ["/healthz", "/readyz"] {
            assert_eq!(
                call(&app, "GET", probe, &[], "").await.status,
                StatusCode::OK
            );
        }
    }

    /// An endpoint added to the protected router is protected with nothing else done, and
    /// answers with the token.
    #[tokio::test]
    async fn a_new_protected_endpoint_is_protected_by_default() {
        let (_dir, state) = state("");
        let app = assemble(
            state,
            protected_endpoints().route(
                "/new",
                axum::routing::post(|| async { reply(StatusCode::OK, json!({"new": true})) }),
            ),
        );
        for auth in [&[][..], &["Bearer nonsense"][..]] {
            let a = call(&app, "POST", "/new", auth, "").await;
            assert_unauthenticated(&a, &format!("POST /new with {auth:?}"));
        }
        let a = call(&app, "POST", "/new", &[&bearer()], "").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.json(), json!({"new": true}));
    }

    /// The router is built once, but the token and `protect_metrics` are the live config's: a
    /// reload that changes them holds from the next request.
    #[tokio::test]
    async fn a_reload_changes_the_token_and_metrics_protection_at_once() {
        let (dir, state) = state("");
        let app = router(state.clone());
        assert_eq!(
            call(&app, "GET", "/metrics", &[], "").await.status,
            StatusCode::OK
        );
        let new = "another-admin-token-0123456789";
        write_config(&dir, new, "protect_metrics = true\n");
        state.reload_config("test").unwrap();
        let a = call(&app, "GET", "/metrics", &[], "").await;
        assert_unauthenticated(&a, "GET /metrics after the reload");
        let a = call(&app, "GET", "/status", &[&bearer()], "").await;
        assert_unauthenticated(&a, "the old token after the reload");
        let a = call(&app, "GET", "/metrics", &[&format!("Bearer {new}")], "").await;
        assert_eq!(a.status, StatusCode::OK);
    }
}
