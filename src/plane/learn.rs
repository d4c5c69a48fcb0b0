//! A create route's 2xx answer on the hyper plane ([`crate::learn`]): the new record's id is
//! read from the `Location` header or from the answer body (at most the route's
//! `creates.max_answer_bytes`), learned into the live snapshot ([`State::learn`]) and only then
//! is the answer sent, so the caller's next call finds the record. Whatever prevents learning
//! (a larger, compressed or non-JSON answer, no id, a refused change) is logged with the
//! request id and counted; the caller gets the CRM's answer unchanged either way, its body
//! byte for byte (the bytes read are sent first, then the rest as it streams).
//!
//! The HTTP/1.1 lane hands such a call to hyper with its decision taken (`lane.rs`).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, LOCATION};
use http::Response;
use hyper::body::Incoming;
use tracing::{info, warn};

use super::pool::Lease;
use super::{left, next_frame, Failure, Paced, Plane, RespBody, RespKind};
use crate::exchange::Ctx;
use crate::learn::{id_from_body, id_from_location, Creates, IdAt};
use crate::live::State;
use crate::policy;

/// The `creates` of the call's route, when it has one.
pub(crate) fn creates_of(ctx: &Ctx) -> Option<&Creates> {
    let (live, permit) = (ctx.live.as_ref()?, ctx.permit.as_ref()?);
    policy::route_info(&live.config, permit.route?)
        .creates
        .as_deref()
}

impl Plane {
    /// [`Plane::pass_back`], learning the record a create route's 2xx answer names first.
    pub(super) async fn answer(
        &self,
        response: Response<Incoming>,
        lease: Lease,
        ctx: &Ctx,
    ) -> Response<RespBody> {
        let Some(creates) = creates_of(ctx).filter(|_| response.status().is_success()) else {
            return self.pass_back(response, lease, ctx);
        };
        if creates.id == IdAt::Location {
            let values: Vec<&[u8]> = response
                .headers()
                .get_all(LOCATION)
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            let id = id_from_location(creates, types(ctx), &values);
            learn(&self.state, ctx, creates, id).await;
            return self.pass_back(response, lease, ctx);
        }
        let (parts, mut incoming) = response.into_parts();
        let max = creates.max_answer_bytes;
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let encoded = parts
            .headers
            .get(CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        let why_not = if encoded {
            Some("the answer is compressed".to_string())
        } else if declared.is_some_and(|n| n > max as u64) {
            Some(format!(
                "the answer is over creates.max_answer_bytes ({max})"
            ))
        } else {
            None
        };
        if let Some(why) = why_not {
            not_learned(&self.state, ctx, &why);
            return self.pass_back(Response::from_parts(parts, incoming), lease, ctx);
        }
        let read_timeout = ctx.upstream_read_timeout();
        let mut buffer: Vec<u8> = Vec::new();
        let mut lease = Some(lease);
        let complete = loop {
            let wait = read_timeout.min(left(ctx.deadline));
            match tokio::time::timeout(wait, next_frame(&mut incoming)).await {
                Err(_) => {
                    let rejection = self.upstream_failed(ctx, Failure::Timeout, "create answer");
                    return super::reject(&rejection, ctx, false);
                }
                Ok(None) => {
                    if let Some(l) = lease.take() {
                        l.release();
                    }
                    break true;
                }
                Ok(Some(Err(e))) => {
                    let rejection = self.upstream_failed(ctx, Failure::Other, &e.to_string());
                    return super::reject(&rejection, ctx, false);
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        buffer.extend_from_slice(&data);
                        if buffer.len() > max {
                            break false;
                        }
                    }
                }
            }
        };
        let body = if complete {
            let id = id_from_body(creates, types(ctx), &buffer);
            learn(&self.state, ctx, creates, id).await;
            RespBody::full(Bytes::from(buffer))
        } else {
            not_learned(
                &self.state,
                ctx,
                &format!("the answer is over creates.max_answer_bytes ({max})"),
            );
            let rest = RespBody {
                kind: RespKind::Stream(Paced::new(incoming, read_timeout, ctx.deadline), lease),
                finish: None,
            };
            RespBody {
                kind: RespKind::Prefixed(Some(Bytes::from(buffer)), Box::new(rest)),
                finish: None,
            }
        };
        self.pass_back_with(parts, body, ctx)
    }
}

fn types(ctx: &Ctx) -> &crate::ids::RecordTypes {
    static NONE: std::sync::OnceLock<crate::ids::RecordTypes> = std::sync::OnceLock::new();
    match &ctx.live {
        Some(l) => l.config.catalog.record_types(),
        None => NONE.get_or_init(Default::default),
    }
}

fn not_learned(state: &State, ctx: &Ctx, why: &str) {
    state.learned.not_learned.fetch_add(1, Ordering::Relaxed);
    warn!(
        request_id = %ctx.request_id,
        "record not learned from the create answer: {why} (the answer is passed on unchanged)"
    );
}

/// Apply the learned record (off the async threads: the writer lock, maybe a full build).
async fn learn(
    state: &std::sync::Arc<State>,
    ctx: &Ctx,
    creates: &Creates,
    id: Result<crate::ids::RecordId, String>,
) {
    // The caller (a person's id) and, with tenants, the tenant the call was allowed in (the
    // caller's membership): the record belongs to it.
    let (caller, tenant) = match (&ctx.live, ctx.permit.as_ref().and_then(|p| p.caller)) {
        (Some(live), Some(c)) => match live.snapshot.as_ref() {
            Some(s) => {
                let u = s.user(c.user);
                let tenant = (u.tenant != crate::snapshot::NO_TENANT)
                    .then(|| s.tenant_id(u.tenant).to_string());
                (Some(u.id.to_string()), tenant)
            }
            None => (None, None),
        },
        _ => (None, None),
    };
    let path = ctx
        .permit
        .as_ref()
        .map_or("", |p| p.canonical.path.as_str());
    let change = id
        .and_then(|id| creates.change(types(ctx), &id, caller.as_deref(), path, tenant.as_deref()));
    let change = match change {
        Ok(c) => c,
        Err(why) => return not_learned(state, ctx, &why),
    };
    let described = match &change {
        crate::changes::Change::UpsertRecord {
            record_type, id, ..
        } => format!(
            "{record_type} '{}'",
            match id {
                crate::records::RawId::Number(n) => n.to_string(),
                crate::records::RawId::Text(t) => t.clone(),
            }
        ),
        _ => String::new(),
    };
    let source = format!("learned (request_id={})", ctx.request_id);
    let s = state.clone();
    match tokio::task::spawn_blocking(move || s.learn(change, &source)).await {
        Ok(Ok(version)) => info!(
            request_id = %ctx.request_id,
            "learned {described} from the create answer (snapshot {version})"
        ),
        Ok(Err(errors)) => not_learned(state, ctx, &format!("{described}: {}", errors.join("; "))),
        Err(e) => not_learned(state, ctx, &format!("{described}: {e}")),
    }
}
