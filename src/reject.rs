//! Every rejection as a JSON body with a stable error code.
//!
//! A denial is a value, not an error: the core returns a [`Rejection`] and one function turns it
//! into a status and a body. The codes are part of the API (documented in the README); never
//! rename one, add a new one instead. Clients never see internal details.

use std::borrow::Cow;

/// A request the gateway answers itself instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status.
    pub status: u16,
    /// Stable snake_case error code.
    pub code: &'static str,
    /// One sentence for a person.
    pub message: Cow<'static, str>,
    /// The permission the caller lacks, where there is one.
    pub permission: Option<String>,
}

impl Rejection {
    pub fn new(status: u16, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Rejection {
            status,
            code,
            message: message.into(),
            permission: None,
        }
    }

    pub fn forbidden(permission: &str) -> Self {
        Rejection {
            status: 403,
            code: "forbidden",
            message: Cow::Owned(format!("this call needs the permission '{permission}'")),
            permission: Some(permission.to_owned()),
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

    /// The client stalled its request body (`listen.body_read_timeout_ms`).
    pub fn body_too_large() -> Self {
        Rejection::new(
            413,
            "body_too_large",
            "the request body is over the gateway's limit (listen.max_body_bytes)",
        )
    }

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

    pub fn upstream_error() -> Self {
        Rejection::new(502, "upstream_error", "the CRM backend failed to answer")
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
        let mut body = serde_json::json!({
            "error": self.code,
            "message": self.message,
            "request_id": request_id,
        });
        if let (Some(p), Some(map)) = (&self.permission, body.as_object_mut()) {
            map.insert("permission".into(), serde_json::Value::String(p.clone()));
        }
        // Serializing a Value of strings cannot fail; fall back to a fixed body all the same.
        serde_json::to_vec(&body).unwrap_or_else(|_| br#"{"error":"internal_error"}"#.to_vec())
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

    #[test]
    fn other_bodies_have_no_permission() {
        let v: serde_json::Value =
            serde_json::from_slice(&Rejection::route_not_found().body("r")).unwrap();
        assert_eq!(v["error"], "route_not_found");
        assert!(v.get("permission").is_none());
    }
}
