//! The demo's config, snapshot and credentials, as shipped in `config/demo/` (the `permgate demo`
//! command itself is the server's), and a token maker for them: the core's tests decide on them.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};

/// The demo config and snapshot, as shipped in `config/demo/`.
pub const DEMO_CONFIG: &str = include_str!("../../../config/demo/permgate.toml");
pub const DEMO_SNAPSHOT: &str = include_str!("../../../config/demo/snapshot.json");
/// The demo's tenant-aware gateway (the tour's tenant stop), as shipped in `config/demo/`.
pub const DEMO_TENANT_CONFIG: &str = include_str!("../../../config/demo/tenants.toml");
pub const DEMO_TENANT_SNAPSHOT: &str = include_str!("../../../config/demo/tenants-snapshot.json");
/// The demo's HS256 key (must match `config/demo/permgate.toml`; a test checks).
pub const DEMO_KID: &str = "demo-hs256";
pub const DEMO_SECRET: &str = "permgate-demo-secret-not-for-production-0123456789";
pub const DEMO_ISSUER: &str = "https://crm.example.test";
pub const DEMO_AUDIENCE: &str = "crm-api";
/// The demo analyst's API key (its SHA-256 is in the demo snapshot).
pub const DEMO_ANALYST_API_KEY: &str = "pgk_demo_analyst_key_5f2c9e";

/// A demo token for `user`, valid for `ttl_secs`.
pub fn demo_token(user: &str, ttl_secs: u64) -> String {
    demo_token_in(user, None, ttl_secs)
}

/// A demo token for `user` in organisation `org` (the `org_id` claim the demo's tenant-aware
/// gateway reads, `config/demo/tenants.toml`), valid for `ttl_secs`.
pub fn demo_token_in(user: &str, org: Option<&str>, ttl_secs: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut claims = serde_json::json!({
        "sub": user,
        "iss": DEMO_ISSUER,
        "aud": DEMO_AUDIENCE,
        "iat": now,
        "nbf": now.saturating_sub(60),
        "exp": now + ttl_secs,
    });
    if let (Some(org), Some(map)) = (org, claims.as_object_mut()) {
        map.insert("org_id".into(), org.into());
    }
    let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(DEMO_KID.to_string());
    // Encoding fixed claims with a valid HMAC key cannot fail; an empty token would be refused.
    encode(
        &header,
        &claims,
        &EncodingKey::from_secret(DEMO_SECRET.as_bytes()),
    )
    .unwrap_or_default()
}

/// The catalogue the demo config compiles: the built-in one plus the demo's record types, which
/// the demo snapshot's `records` need.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn demo_catalog() -> crate::catalog::Catalog {
    crate::config::Config::parse("permgate.toml", DEMO_CONFIG, &std::env::temp_dir())
        .unwrap()
        .catalog
}
