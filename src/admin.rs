//! The admin API, on its own listener (never the traffic port).
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
//! The open set is an allow-list ([`is_open`]): every other method and path, including an
//! unknown one and any endpoint added later, needs the token before it is even routed (an
//! unknown path without a token is 401, not 404: nothing about the API is learned without it).
//!
//! A refused change leaves everything live as it was.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use log::{info, warn};
use serde_json::json;

use crate::changes::Change;
use crate::live::State;

type Body = Full<Bytes>;

fn reply(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec(&v).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    reply(status, json!({"error": code, "message": message}))
}

/// Compare in time independent of where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What anyone who reaches the admin port may call without the token: the probes (they
/// cannot hold secrets and reveal nothing) and, unless `admin.protect_metrics`, the metrics.
fn is_open(method: &Method, path: &str, protect_metrics: bool) -> bool {
    *method == Method::GET
        && match path {
            "/healthz" | "/readyz" => true,
            "/metrics" => !protect_metrics,
            _ => false,
        }
}

fn authorized(admin: Option<&crate::config::Admin>, req: &Request<Incoming>) -> bool {
    let Some(admin) = admin else {
        return false;
    };
    let mut values = req.headers().get_all(http::header::AUTHORIZATION).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return false;
    };
    v.to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.as_bytes(), admin.token.as_bytes()))
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Response<Body>> {
    match Limited::new(req.into_body(), limit).collect().await {
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

/// Run a blocking build off the async thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

fn outcome(r: Option<Result<String, Vec<String>>>, key: &str, code: &str) -> Response<Body> {
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

/// Handle one admin request.
pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let admin = state.live().config.admin.clone();
    let protect_metrics = admin.as_ref().is_some_and(|a| a.protect_metrics);
    if !is_open(&method, &path, protect_metrics) && !authorized(admin.as_ref(), &req) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "the admin API needs 'Authorization: Bearer <admin token>'",
        );
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        info!("admin {method} {path} → 401");
        return Ok(r);
    }
    let resp = match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, json!({"status": "ok"})),
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(state.render_metrics())));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (&Method::GET, "/readyz") => {
            let ready = state.ready();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, json!({"ready": ready, "stale": state.is_stale()}))
        }
        (&Method::GET, "/status") => reply(StatusCode::OK, state.status()),
        (&Method::POST, "/explain") => {
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
            match read_body(req, 64 * 1024).await {
                Err(r) => r,
                Ok(body) => match serde_json::from_slice::<Ask>(&body) {
                    Err(e) => error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
                    Ok(ask) => {
                        let live = state.live();
                        match &live.snapshot {
                            None => error(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "not_ready",
                                "no snapshot is loaded",
                            ),
                            Some(s) => reply(
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
                            ),
                        }
                    }
                },
            }
        }
        (&Method::POST, "/reload") => {
            let s = state.clone();
            outcome(
                blocking(move || s.reload_config("admin")).await,
                "config_hash",
                "config_refused",
            )
        }
        (&Method::PUT, "/snapshot") => {
            let limit = state
                .live()
                .config
                .admin
                .as_ref()
                .map_or(0, |a| a.max_snapshot_bytes);
            match read_body(req, limit).await {
                Err(r) => r,
                Ok(body) => match String::from_utf8(body.to_vec()) {
                    Err(_) => error(
                        StatusCode::BAD_REQUEST,
                        "bad_body",
                        "the snapshot is not UTF-8",
                    ),
                    Ok(text) => {
                        let s = state.clone();
                        outcome(
                            blocking(move || s.replace_snapshot(&text, "admin")).await,
                            "version",
                            "snapshot_refused",
                        )
                    }
                },
            }
        }
        (&Method::POST, "/snapshot/changes") => {
            let limit = state
                .live()
                .config
                .admin
                .as_ref()
                .map_or(0, |a| a.max_snapshot_bytes);
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Batch {
                changes: Vec<Change>,
            }
            match read_body(req, limit).await {
                Err(r) => r,
                Ok(body) => match serde_json::from_slice::<Batch>(&body) {
                    Err(e) => error(StatusCode::BAD_REQUEST, "bad_changes", &e.to_string()),
                    Ok(batch) => {
                        let s = state.clone();
                        outcome(
                            blocking(move || s.apply_changes(&batch.changes, "admin")).await,
                            "version",
                            "changes_refused",
                        )
                    }
                },
            }
        }
        (
            _,
            "/healthz" | "/readyz" | "/metrics" | "/status" | "/explain" | "/reload" | "/snapshot"
            | "/snapshot/changes",
        ) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "wrong method for this endpoint",
        ),
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
    };
    if resp.status() != StatusCode::OK || method != Method::GET {
        info!("admin {method} {path} → {}", resp.status().as_u16());
    }
    Ok(resp)
}

/// Serve the admin API on `listener` until the process ends.
pub async fn serve(state: Arc<State>, listener: tokio::net::TcpListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("admin accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
            {
                warn!("admin connection error: {e}");
            }
        });
    }
}
