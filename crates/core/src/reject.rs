//! Every rejection as a JSON body with a stable error code.
//!
//! A denial is a value, not an error: the core returns a [`Rejection`] and one function turns it
//! into a status and a body. The codes are part of the API (documented in the README); never
//! rename one, add a new one instead. Clients never see internal details.
//!
//! Building a rejection allocates nothing for the common denial (a missing permission): the
//! permission's name is the catalogue's shared `Arc<str>`, and its message is written out only
//! when it is read ([`Rejection::message`], [`Rejection::body`]).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

/// A request the gateway answers itself instead of forwarding.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// HTTP status.
    pub status: u16,
    /// Stable snake_case error code.
    pub code: &'static str,
    /// One sentence for a person ([`Rejection::message`]).
    message: Message,
    /// The permission the caller lacks, where there is one.
    pub permission: Option<Arc<str>>,
    /// Seconds after which a retry may succeed (sent as `Retry-After`). Two bytes: the
    /// rejection stays as small as before.
    pub retry_after: Option<std::num::NonZeroU16>,
}

#[derive(Debug, Clone)]
enum Message {
    Text(Cow<'static, str>),
    /// "this call needs the permission '{permission}'", written out when read.
    NeedsPermission,
}

impl PartialEq for Rejection {
    fn eq(&self, other: &Self) -> bool {
        self.status == other.status
            && self.code == other.code
            && self.permission == other.permission
            && self.message() == other.message()
    }
}

impl Eq for Rejection {}

/// A rejection's message, written without building it first.
struct MessageText<'a>(&'a Rejection);

impl fmt::Display for MessageText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.message {
            Message::Text(t) => f.write_str(t),
            Message::NeedsPermission => write!(
                f,
                "this call needs the permission '{}'",
                self.0.permission.as_deref().unwrap_or_default()
            ),
        }
    }
}

impl Serialize for MessageText<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The JSON body, fields in the order of a `serde_json` map (sorted by name), as before.
#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: MessageText<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    permission: Option<&'a str>,
    request_id: &'a str,
}

impl Rejection {
    pub fn new(status: u16, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Rejection {
            status,
            code,
            message: Message::Text(message.into()),
            permission: None,
            retry_after: None,
        }
    }

    /// 403 `forbidden`: the caller lacks `permission` (pass the catalogue's shared name,
    /// [`crate::catalog::Catalog::permission_shared`], to allocate nothing).
    pub fn forbidden(permission: impl Into<Arc<str>>) -> Self {
        Rejection {
            status: 403,
            code: "forbidden",
            message: Message::NeedsPermission,
            permission: Some(permission.into()),
            retry_after: None,
        }
    }

    /// One sentence for a person.
    pub fn message(&self) -> Cow<'_, str> {
        match &self.message {
            Message::Text(t) => Cow::Borrowed(t),
            Message::NeedsPermission => Cow::Owned(MessageText(self).to_string()),
        }
    }

    pub fn route_not_found() -> Self {
        Rejection::new(
            404,
            "route_not_found",
            "no route in the gateway's config matches this method and path",
        )
    }

    pub fn upstream_unavailable() -> Self {
        Rejection::new(
            502,
            "upstream_unavailable",
            "the CRM backend could not be reached",
        )
    }

    /// 413 `body_too_large`: the request body is over `listen.max_body_bytes`, the gateway's
    /// limit for any body.
    pub fn body_too_large() -> Self {
        Rejection::new(
            413,
            "body_too_large",
            "the request body is over the gateway's limit (listen.max_body_bytes)",
        )
    }

    /// 413 `body_too_large`: the body of a route that reads it whole to check it is over that
    /// route's `body.max_bytes` (the same code as [`Rejection::body_too_large`], naming the
    /// route's setting).
    pub fn route_body_too_large() -> Self {
        Rejection::new(
            413,
            "body_too_large",
            "the request body is over this route's limit (body.max_bytes)",
        )
    }

    /// 400 `bad_request`: the request body could not be read (malformed chunks, cut short, a
    /// framing error), on every data plane.
    pub fn body_unreadable() -> Self {
        Rejection::new(400, "bad_request", "the request could not be read")
    }

    /// 408 `request_timeout`: the client stalled its request body
    /// (`listen.body_read_timeout_ms`, or the total timeout ran out while it was sending).
    pub fn request_timeout() -> Self {
        Rejection::new(
            408,
            "request_timeout",
            "the request body did not arrive in time",
        )
    }

    pub fn upstream_timeout() -> Self {
        Rejection::new(
            504,
            "upstream_timeout",
            "the CRM backend did not answer in time",
        )
    }

    /// The CRM instance is at `upstream.max_connections` and the wait queue is full, or the
    /// wait ran out (sent with `Retry-After`).
    pub fn upstream_busy() -> Self {
        Rejection {
            retry_after: Some(std::num::NonZeroU16::MIN),
            ..Rejection::new(
                503,
                "upstream_busy",
                "the CRM backend is at its connection limit; retry later",
            )
        }
    }

    pub fn upstream_error() -> Self {
        Rejection::new(502, "upstream_error", "the CRM backend failed to answer")
    }

    /// 429 `rate_limited`: over a rate limit (`[rate_limit] per_caller`, or the route's own);
    /// a retry after `retry_after` seconds is admitted.
    pub fn rate_limited(route: bool, retry_after: u32) -> Self {
        let secs = u16::try_from(retry_after).unwrap_or(u16::MAX);
        Rejection {
            retry_after: Some(std::num::NonZeroU16::MIN.saturating_add(secs.saturating_sub(1))),
            ..Rejection::new(
                429,
                "rate_limited",
                if route {
                    "too many calls to this route; retry after the time in Retry-After"
                } else {
                    "too many calls from this caller; retry after the time in Retry-After"
                },
            )
        }
    }

    pub fn not_ready() -> Self {
        Rejection::new(
            503,
            "not_ready",
            "the gateway has no policy snapshot loaded; nothing is allowed",
        )
    }

    pub fn internal() -> Self {
        Rejection::new(
            500,
            "internal_error",
            "the gateway failed to handle this request",
        )
    }

    /// The JSON body: `{"error":…,"message":…,"permission":…,"request_id":…}`.
    pub fn body(&self, request_id: &str) -> Vec<u8> {
        let body = Body {
            error: self.code,
            message: MessageText(self),
            permission: self.permission.as_deref(),
            request_id,
        };
        let mut out = Vec::with_capacity(160);
        // Writing strings to a Vec cannot fail; fall back to a fixed body all the same.
        match serde_json::to_writer(&mut out, &body) {
            Ok(()) => out,
            Err(_) => br#"{"error":"internal_error"}"#.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_body_names_permission_and_request_id() {
        let body = Rejection::forbidden("campaign.delete").body("req-1");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "forbidden");
        assert_eq!(v["permission"], "campaign.delete");
        assert_eq!(v["request_id"], "req-1");
        assert!(v["message"].as_str().unwrap().contains("campaign.delete"));
    }

    /// The body as it was built before (a `serde_json::Value`, keys sorted), for comparison.
    fn value_body(r: &Rejection, request_id: &str) -> Vec<u8> {
        let mut body = serde_json::json!({
            "error": r.code,
            "message": r.message(),
            "request_id": request_id,
        });
        if let (Some(p), Some(map)) = (&r.permission, body.as_object_mut()) {
            map.insert(
                "permission".into(),
                serde_json::Value::String(p.to_string()),
            );
        }
        serde_json::to_vec(&body).unwrap()
    }

    #[test]
    fn bodies_are_byte_for_byte_the_value_bodies() {
        let mut assignee = Rejection::new(
            403,
            "assignee_forbidden",
            "the new owner 'a\"b\\c\u{1}\u{7f}é\n' is not a user known to the gateway",
        );
        assignee.permission = Some("lead.reassign".into());
        let cases = [
            Rejection::forbidden("campaign.delete"),
            Rejection::forbidden(Arc::<str>::from("a.b\"c")),
            assignee,
            Rejection::route_not_found(),
            Rejection::new(400, "invalid_record_id", String::from("x: \"\t\"")),
        ];
        for r in &cases {
            for id in ["req-1", "0123456789abcdef", "q\"\\"] {
                let body = r.body(id);
                assert_eq!(
                    String::from_utf8(body.clone()).unwrap(),
                    String::from_utf8(value_body(r, id)).unwrap()
                );
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["message"], *r.message());
            }
        }
        assert_eq!(
            Rejection::forbidden("campaign.delete").body("r"),
            br#"{"error":"forbidden","message":"this call needs the permission 'campaign.delete'","permission":"campaign.delete","request_id":"r"}"#
        );
    }

    #[test]
    fn a_forbidden_rejection_equals_the_same_text_built_by_hand() {
        let mut by_hand = Rejection::new(
            403,
            "forbidden",
            "this call needs the permission 'lead.view'",
        );
        by_hand.permission = Some("lead.view".into());
        assert_eq!(Rejection::forbidden("lead.view"), by_hand);
        assert_ne!(Rejection::forbidden("lead.edit"), by_hand);
        assert_eq!(
            Rejection::forbidden("lead.view").message(),
            "this call needs the permission 'lead.view'"
        );
    }

    #[test]
    fn other_bodies_have_no_permission() {
        let v: serde_json::Value =
            serde_json::from_slice(&Rejection::route_not_found().body("r")).unwrap();
        assert_eq!(v["error"], "route_not_found");
        assert!(v.get("permission").is_none());
    }
}
