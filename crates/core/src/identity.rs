//! Who is calling: a JWT bearer token, an API key, or an identity header from a trusted peer.
//!
//! Why one file (~1,050 lines without its tests): every credential kind is compiled and checked
//! here so that "exactly one credential" is decided in one place.
//!
//! Exactly one credential must be presented; two kinds at once are ambiguous and refused (400),
//! none is 401. JWTs are verified with a key picked by `kid` whose algorithm is pinned in the
//! config (a token naming another algorithm is refused, so RS→HS confusion cannot happen);
//! `exp` is required; `iss` and `aud` are required and checked when the config names them (a
//! CRM's own tokens often carry neither) and not looked at when it does not (`check-config` says
//! so); `nbf` and `iat` are checked when present; `kid` may be left out when there is one key.
//! Headers that point at other keys
//! (`jku`, `x5u`, `jwk`, `x5c`) are refused: permgate never fetches or trusts a key a token names.
//! API keys are never stored: the snapshot holds their SHA-256, and the presented key is hashed.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::error::{line_of, ConfigError};
use crate::hash::KeyedState;
use crate::jwks::{JwksSource, JwksStore};
use crate::reject::Rejection;

// ---- config section -----------------------------------------------------------------------

/// `[identity]` in the config.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    #[serde(default)]
    jwt: Option<Spanned<RawJwt>>,
    #[serde(default)]
    api_keys: Option<RawApiKeys>,
    #[serde(default)]
    trusted_header: Option<Spanned<RawTrustedHeader>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default = "default_user_claim")]
    user_claim: String,
    #[serde(default = "default_leeway")]
    leeway_seconds: u64,
    #[serde(default)]
    keys: Vec<Spanned<RawJwtKey>>,
    #[serde(default)]
    jwks_files: Vec<Spanned<String>>,
    #[serde(default)]
    jwks_url: Option<Spanned<String>>,
    #[serde(default)]
    oidc_discovery: bool,
    #[serde(default = "default_jwks_refresh")]
    jwks_refresh_seconds: u64,
    #[serde(default = "default_jwks_min_refresh")]
    jwks_min_refresh_seconds: u64,
    /// Claims a token must carry with exactly these string values, e.g.
    /// `{ token_type = "access" }`: a CRM that signs its access and refresh tokens with one key
    /// (Django simplejwt) tells them apart only by such a claim.
    #[serde(default)]
    required_claims: std::collections::BTreeMap<String, String>,
}

fn default_jwks_refresh() -> u64 {
    300
}
fn default_jwks_min_refresh() -> u64 {
    10
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwtKey {
    kid: String,
    alg: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    secret_file: Option<String>,
    #[serde(default)]
    public_key_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKeys {
    #[serde(default)]
    header: Option<String>,
    #[serde(default = "default_true")]
    bearer: bool,
    /// What reaches the CRM once the key is verified: nothing (`strip`, the default) or the
    /// key as the client sent it, in its own header or `Authorization` (`forward`).
    #[serde(default)]
    forward: CredentialForward,
}

/// What a verified credential becomes upstream (`[identity.api_keys] forward`).
#[derive(Deserialize, Default, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CredentialForward {
    /// Verified by permgate, then removed: the CRM sees only the identity headers.
    #[default]
    Strip,
    /// Verified by permgate, then forwarded as sent (the CRM can check it, and replay it).
    Forward,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrustedHeader {
    name: String,
    trusted_cidrs: Vec<String>,
}

fn default_user_claim() -> String {
    "sub".into()
}
fn default_leeway() -> u64 {
    30
}
fn default_true() -> bool {
    true
}

const ALLOWED_ALGS: [Algorithm; 3] = [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256];

/// The largest clock-skew allowance accepted for `exp`/`nbf`.
pub const MAX_LEEWAY_SECONDS: u64 = 300;

/// Headers that can never carry a credential: framing, routing, hop-by-hop, and permgate's own.
fn reserved_credential_header(name: &HeaderName) -> bool {
    crate::headers::RESERVED_HEADERS.contains(&name.as_str())
        || name.as_str().starts_with("x-permgate-")
}

// ---- compiled verifier --------------------------------------------------------------------

struct JwtKey {
    alg: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

struct JwtVerifier {
    keys: HashMap<String, JwtKey>,
    /// Keys fetched from a JWKS URL (or OIDC discovery), and the validation each of their
    /// algorithms gets (the same claim rules as the configured keys).
    jwks: Option<Arc<JwksStore>>,
    jwks_validation: [(Algorithm, Validation); 2],
    user_claim: String,
    /// `[tenants] from = "claim:<name>"`: the claim read as the call's tenant (set after the
    /// config's `[tenants]` is compiled, before any token is verified).
    tenant_claim: Option<String>,
    /// `identity.jwt.required_claims`: (claim, the exact string value it must hold).
    required_claims: Vec<(String, String)>,
    cache: TokenCache,
    /// Whether `iss` / `aud` are checked (configured), for `check-config` to say so.
    checks_issuer: bool,
    checks_audience: bool,
}

/// Verified tokens, so a client that reuses its token pays for the signature check once.
///
/// Keyed by the whole token (same bytes, same signature, same verdict); an entry is used only
/// until the token's `exp`. Lives in the compiled config, so a reload (new keys) starts empty.
/// Bounded: a full shard is cleared (simple, and an attacker filling it only costs us
/// re-verification). Failures are never cached.
///
/// An entry is found by a keyed hash of the token's last [`HASHED_TAIL`] bytes (its signature,
/// which differs between any two valid tokens) and then compared whole: hashing a 200-byte
/// token whole cost more than the rest of a cached decision.
struct TokenCache {
    hasher: KeyedState,
    shards: Vec<Shard>,
}

/// tail hash → (token, user id, exp). Two tokens with the same tail hash share a slot (the
/// later one replaces the earlier: a miss, never a wrong answer).
type Shard = std::sync::Mutex<HashMap<u64, CachedToken, PreHashed>>;

struct CachedToken {
    token: Box<[u8]>,
    user: Arc<str>,
    /// The tenant claim's value (`[tenants] from = "claim:…"`), when configured and present.
    tenant: Option<Arc<str>>,
    /// The JWKS key set's epoch the token was verified under (0 without a JWKS): an entry of
    /// another epoch is a miss, so a token verified with a key the IdP withdrew is checked
    /// again (and refused) rather than answered from the cache.
    epoch: u64,
    exp: u64,
}

const CACHE_SHARDS: usize = 16;
const CACHE_PER_SHARD: usize = 4096;
const HASHED_TAIL: usize = 32;

impl TokenCache {
    fn new() -> Self {
        TokenCache {
            hasher: KeyedState::default(),
            shards: (0..CACHE_SHARDS)
                .map(|_| std::sync::Mutex::new(HashMap::default()))
                .collect(),
        }
    }

    fn slot(&self, token: &[u8]) -> (&Shard, u64) {
        let tail = &token[token.len().saturating_sub(HASHED_TAIL)..];
        let h = self.hasher.hash_one(tail);
        (&self.shards[(h >> 60) as usize % CACHE_SHARDS], h)
    }

    fn get(&self, token: &[u8], now: u64, epoch: u64) -> Option<(Arc<str>, Option<Arc<str>>)> {
        let (shard, h) = self.slot(token);
        let shard = shard.lock().ok()?;
        match shard.get(&h) {
            Some(c) if now < c.exp && c.epoch == epoch && *c.token == *token => {
                Some((c.user.clone(), c.tenant.clone()))
            }
            _ => None,
        }
    }

    fn put(&self, token: &[u8], user: &Arc<str>, tenant: &Option<Arc<str>>, exp: u64, epoch: u64) {
        let (shard, h) = self.slot(token);
        if let Ok(mut shard) = shard.lock() {
            if shard.len() >= CACHE_PER_SHARD {
                shard.clear();
            }
            shard.insert(
                h,
                CachedToken {
                    token: token.into(),
                    user: user.clone(),
                    tenant: tenant.clone(),
                    exp,
                    epoch,
                },
            );
        }
    }
}

/// A map keyed by a hash already computed (and keyed): the key is its own hash.
#[derive(Default, Clone, Copy)]
struct PreHashed;

struct PreHashedHasher(u64);

impl std::hash::BuildHasher for PreHashed {
    type Hasher = PreHashedHasher;
    fn build_hasher(&self) -> PreHashedHasher {
        PreHashedHasher(0)
    }
}

impl std::hash::Hasher for PreHashedHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; anything else still spreads.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = x;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(u64::MAX)
}

/// The compiled identity rules of a config.
pub struct Verifier {
    jwt: Option<JwtVerifier>,
    api_key_header: Option<HeaderName>,
    api_key_bearer: bool,
    api_key_forward: bool,
    trusted: Option<(HeaderName, Vec<IpNet>)>,
}

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Jwt,
    ApiKey,
    TrustedHeader,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Jwt => "jwt",
            Method::ApiKey => "api_key",
            Method::TrustedHeader => "trusted_header",
        }
    }
}

/// A verified credential, before the snapshot says who it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user id (from a JWT claim or a trusted header; shared with the token cache).
    User(Arc<str>),
    /// The SHA-256 of an API key.
    ApiKey([u8; 32]),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identified {
    pub credential: Credential,
    pub method: Method,
    /// The token's tenant claim (`[tenants] from = "claim:…"`; JWT callers only).
    pub tenant: Option<Arc<str>>,
}

/// The SHA-256 of an API key, as stored in the snapshot (`sha256:<hex>`).
pub fn api_key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn unauthenticated(code: &'static str, message: &'static str) -> Rejection {
    Rejection::new(401, code, message)
}

/// The claim rules every key of a config verifies with: `exp` always; `iss` and `aud` when
/// configured (then required and checked), not looked at otherwise; `nbf` checked when present.
fn validation_for(alg: Algorithm, j: &RawJwt) -> Validation {
    let mut validation = Validation::new(alg);
    let mut required = vec!["exp"];
    if let Some(iss) = &j.issuer {
        validation.set_issuer(&[iss]);
        required.push("iss");
    }
    match &j.audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation.validate_nbf = true;
    validation.leeway = j.leeway_seconds;
    validation
}

impl Verifier {
    /// The JWKS store the control thread keeps fresh, when the config names a JWKS URL or
    /// OIDC discovery.
    pub fn jwks(&self) -> Option<&Arc<JwksStore>> {
        self.jwt.as_ref().and_then(|j| j.jwks.as_ref())
    }

    /// What `check-config` tells the operator about how tokens are checked: the claims that
    /// are left unchecked because the config does not name them.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.api_key_forward {
            notes.push(
                "api_keys: forwarded to the CRM as sent once verified (forward = \"forward\"): \
                 the CRM sees, and can replay, every caller's key"
                    .to_string(),
            );
        }
        let Some(j) = &self.jwt else {
            return notes;
        };
        notes.push(format!(
            "jwt: exp required; nbf and iat checked when present; user from '{}'",
            j.user_claim
        ));
        for (claim, value) in &j.required_claims {
            notes.push(format!("jwt: {claim} must be \"{value}\""));
        }
        if let Some(s) = &j.jwks {
            notes.push(format!(
                "jwt: keys also from {} (fetched when serving, not by check-config)",
                s.source().first_url()
            ));
        }
        for (checked, claim, key) in [
            (j.checks_issuer, "iss", "issuer"),
            (j.checks_audience, "aud", "audience"),
        ] {
            notes.push(if checked {
                format!("jwt: {claim} required and checked (identity.jwt.{key})")
            } else {
                format!(
                    "jwt: {claim} NOT checked (identity.jwt.{key} is not set): a token with \
                     any {claim}, or none, signed with one of the [[identity.jwt.keys]] is \
                     accepted"
                )
            });
        }
        notes
    }

    /// Compile `[identity]`. `base` resolves key file paths.
    pub fn build(
        raw: &IdentitySection,
        file: &str,
        text: &str,
        base: &Path,
    ) -> Result<Verifier, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut jwt = None;
        if let Some(j) = &raw.jwt {
            let jline = Some(line_of(text, j.span().start));
            let j = j.get_ref();
            if [&j.issuer, &j.audience]
                .into_iter()
                .flatten()
                .any(|v| v.trim().is_empty())
            {
                errors.push(ConfigError::new(
                    file,
                    jline,
                    "identity.jwt",
                    "issuer and audience must not be empty (leave a key out not to check it)",
                ));
            }
            if j.leeway_seconds > MAX_LEEWAY_SECONDS {
                errors.push(ConfigError::new(
                    file,
                    jline,
                    "identity.jwt.leeway_seconds",
                    format!("at most {MAX_LEEWAY_SECONDS} (a large leeway disables exp and nbf)"),
                ));
            }
            let mut keys = HashMap::new();
            let mut add = |kid: String,
                           alg: Algorithm,
                           key: DecodingKey,
                           line: Option<usize>,
                           errors: &mut Vec<ConfigError>| {
                if keys.contains_key(&kid) {
                    errors.push(ConfigError::new(
                        file,
                        line,
                        "identity.jwt.keys.kid",
                        format!("key id '{kid}' is defined twice"),
                    ));
                    return;
                }
                let validation = validation_for(alg, j);
                keys.insert(
                    kid,
                    JwtKey {
                        alg,
                        key,
                        validation,
                    },
                );
            };
            for k in &j.keys {
                let line = Some(line_of(text, k.span().start));
                let k = k.get_ref();
                let err = |m: String| ConfigError::new(file, line, "identity.jwt.keys", m);
                let alg = match Algorithm::from_str(&k.alg) {
                    Ok(a) if ALLOWED_ALGS.contains(&a) => a,
                    _ => {
                        errors.push(err(format!(
                            "alg '{}' is not one of HS256, RS256, ES256",
                            k.alg
                        )));
                        continue;
                    }
                };
                let read = |p: &str| std::fs::read(base.join(p));
                let key = match (alg, &k.secret, &k.secret_file, &k.public_key_file) {
                    (Algorithm::HS256, Some(s), None, None) => Ok(s.as_bytes().to_vec()),
                    (Algorithm::HS256, None, Some(f), None) => read(f)
                        .map(|mut b| {
                            // A trailing newline in a secret file is an editor's, not the key's.
                            while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                                b.pop();
                            }
                            b
                        })
                        .map_err(|e| format!("cannot read secret_file '{f}': {e}")),
                    (Algorithm::HS256, _, _, _) => {
                        Err("an HS256 key needs exactly one of secret, secret_file".into())
                    }
                    (_, None, None, Some(f)) => {
                        read(f).map_err(|e| format!("cannot read public_key_file '{f}': {e}"))
                    }
                    _ => Err(format!(
                        "a {} key needs public_key_file (and no secret)",
                        k.alg
                    )),
                };
                let key = match key {
                    Ok(k) => k,
                    Err(e) => {
                        errors.push(err(e));
                        continue;
                    }
                };
                let decoding = match alg {
                    Algorithm::HS256 => {
                        if key.len() < 32 {
                            errors
                                .push(err("an HS256 secret must be at least 32 bytes".to_string()));
                            continue;
                        }
                        Ok(DecodingKey::from_secret(&key))
                    }
                    Algorithm::RS256 => DecodingKey::from_rsa_pem(&key),
                    _ => DecodingKey::from_ec_pem(&key),
                };
                match decoding {
                    Ok(d) => add(k.kid.clone(), alg, d, line, &mut errors),
                    Err(e) => errors.push(err(format!("bad {} public key: {e}", k.alg))),
                }
            }
            for f in &j.jwks_files {
                let line = Some(line_of(text, f.span().start));
                let path = base.join(f.get_ref());
                let err = |m: String| ConfigError::new(file, line, "identity.jwt.jwks_files", m);
                let set: jsonwebtoken::jwk::JwkSet = match std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                {
                    Ok(s) => s,
                    Err(e) => {
                        errors.push(err(format!("'{}': {e}", path.display())));
                        continue;
                    }
                };
                for (i, jwk) in set.keys.iter().enumerate() {
                    match crate::jwks::jwk_key(jwk, false) {
                        Ok((kid, alg, d)) => add(kid, alg, d, line, &mut errors),
                        Err(e) => errors.push(err(format!("'{}': keys[{i}]: {e}", path.display()))),
                    }
                }
            }
            let jwks_source = match (&j.jwks_url, j.oidc_discovery, &j.issuer) {
                (None, false, _) => None,
                (Some(u), false, _) => Some((JwksSource::Url(u.get_ref().clone()), u.span())),
                (None, true, Some(iss)) => Some((JwksSource::Discovery(iss.clone()), 0..0)),
                (None, true, None) => {
                    errors.push(ConfigError::new(
                        file,
                        jline,
                        "identity.jwt.oidc_discovery",
                        "needs identity.jwt.issuer (discovery reads <issuer>/.well-known/openid-configuration)",
                    ));
                    None
                }
                (Some(u), true, _) => {
                    errors.push(ConfigError::new(
                        file,
                        Some(line_of(text, u.span().start)),
                        "identity.jwt.jwks_url",
                        "set jwks_url or oidc_discovery, not both",
                    ));
                    None
                }
            };
            if let Some((source, span)) = &jwks_source {
                let line = if span.is_empty() {
                    jline
                } else {
                    Some(line_of(text, span.start))
                };
                // Keys from an IdP sign tokens for every application it serves: without `iss`
                // and `aud` checks, a token issued to another application would pass here.
                if j.issuer.is_none() || j.audience.is_none() {
                    errors.push(ConfigError::new(
                        file,
                        line,
                        "identity.jwt",
                        "keys fetched from an IdP (jwks_url, oidc_discovery) need both issuer and \
                         audience: the IdP signs tokens for other applications too",
                    ));
                }
                if let Err(e) = crate::jwks::check_url(&source.first_url()) {
                    errors.push(ConfigError::new(file, line, "identity.jwt.jwks_url", e));
                }
                if !(10..=86_400).contains(&j.jwks_refresh_seconds) {
                    errors.push(ConfigError::new(
                        file,
                        jline,
                        "identity.jwt.jwks_refresh_seconds",
                        "must be between 10 and 86400",
                    ));
                }
                if !(1..=j.jwks_refresh_seconds.max(1)).contains(&j.jwks_min_refresh_seconds) {
                    errors.push(ConfigError::new(
                        file,
                        jline,
                        "identity.jwt.jwks_min_refresh_seconds",
                        "must be between 1 and jwks_refresh_seconds",
                    ));
                }
            }
            if keys.is_empty() && jwks_source.is_none() && errors.is_empty() {
                errors.push(ConfigError::new(
                    file,
                    jline,
                    "identity.jwt",
                    "no keys: add [[identity.jwt.keys]], jwks_files, jwks_url or oidc_discovery",
                ));
            }
            if j.user_claim.is_empty() {
                errors.push(ConfigError::new(
                    file,
                    jline,
                    "identity.jwt.user_claim",
                    "must not be empty",
                ));
            }
            for (claim, value) in &j.required_claims {
                let problem = if claim.is_empty() || value.is_empty() {
                    Some("a claim name and its value must not be empty")
                } else if ["exp", "nbf", "iat", "iss", "aud"].contains(&claim.as_str()) {
                    Some("exp, nbf and iat are always checked; iss and aud are set with issuer and audience")
                } else if *claim == j.user_claim {
                    Some("the user claim names the user; it cannot also be required to hold one value")
                } else {
                    None
                };
                if let Some(problem) = problem {
                    errors.push(ConfigError::new(
                        file,
                        crate::error::locate(text, "identity.jwt.required_claims").or(jline),
                        &format!("identity.jwt.required_claims.{claim}"),
                        problem,
                    ));
                }
            }
            let jwks = match jwks_source {
                Some((source, _)) if errors.is_empty() => Some(JwksStore::shared(
                    source,
                    std::time::Duration::from_secs(j.jwks_refresh_seconds),
                    std::time::Duration::from_secs(j.jwks_min_refresh_seconds),
                )),
                _ => None,
            };
            jwt = Some(JwtVerifier {
                keys,
                jwks,
                jwks_validation: [Algorithm::RS256, Algorithm::ES256]
                    .map(|alg| (alg, validation_for(alg, j))),
                user_claim: j.user_claim.clone(),
                tenant_claim: None,
                required_claims: j
                    .required_claims
                    .iter()
                    .map(|(c, v)| (c.clone(), v.clone()))
                    .collect(),
                cache: TokenCache::new(),
                checks_issuer: j.issuer.is_some(),
                checks_audience: j.audience.is_some(),
            });
        }

        let api_key_forward = raw
            .api_keys
            .as_ref()
            .is_some_and(|a| a.forward == CredentialForward::Forward);
        let (api_key_header, api_key_bearer) = match &raw.api_keys {
            None => (None, false),
            Some(a) => {
                let h = match &a.header {
                    None => None,
                    Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
                        Ok(h) if reserved_credential_header(&h) => {
                            errors.push(ConfigError::new(
                                file,
                                crate::error::locate(text, "identity.api_keys.header"),
                                "identity.api_keys.header",
                                format!("'{h}' is reserved (framing, routing, hop-by-hop, Authorization or x-permgate-*)"),
                            ));
                            None
                        }
                        Ok(h) => Some(h),
                        Err(_) => {
                            errors.push(ConfigError::new(
                                file,
                                crate::error::locate(text, "identity.api_keys.header"),
                                "identity.api_keys.header",
                                format!("'{h}' is not a valid header name"),
                            ));
                            None
                        }
                    },
                };
                if h.is_none() && !a.bearer && a.header.is_none() {
                    errors.push(ConfigError::new(
                        file,
                        crate::error::locate(text, "identity.api_keys"),
                        "identity.api_keys",
                        "with bearer = false, set a header; otherwise no API key can ever be presented",
                    ));
                }
                (h, a.bearer)
            }
        };

        let mut trusted = None;
        if let Some(t) = &raw.trusted_header {
            let line = Some(line_of(text, t.span().start));
            let t = t.get_ref();
            let name = HeaderName::from_bytes(t.name.as_bytes());
            let mut nets = Vec::new();
            for c in &t.trusted_cidrs {
                match c.parse::<IpNet>() {
                    Ok(n) if n.prefix_len() == 0 => errors.push(ConfigError::new(
                        file,
                        line,
                        "identity.trusted_header.trusted_cidrs",
                        format!("'{c}' trusts every address: anyone could claim any identity"),
                    )),
                    Ok(n) => nets.push(n),
                    Err(_) => errors.push(ConfigError::new(
                        file,
                        line,
                        "identity.trusted_header.trusted_cidrs",
                        format!("'{c}' is not a CIDR (e.g. 10.0.0.0/8)"),
                    )),
                }
            }
            if nets.is_empty() {
                errors.push(ConfigError::new(
                    file,
                    line,
                    "identity.trusted_header.trusted_cidrs",
                    "list at least one trusted network",
                ));
            }
            match name {
                Ok(n) if reserved_credential_header(&n) || api_key_header.as_ref() == Some(&n) => {
                    errors.push(ConfigError::new(
                        file,
                        line,
                        "identity.trusted_header.name",
                        format!("'{n}' is reserved or already the API key header"),
                    ))
                }
                Ok(n) => trusted = Some((n, nets)),
                Err(_) => errors.push(ConfigError::new(
                    file,
                    line,
                    "identity.trusted_header.name",
                    format!("'{}' is not a valid header name", t.name),
                )),
            }
        }
        if jwt.is_none() && api_key_header.is_none() && !api_key_bearer && trusted.is_none() {
            errors.push(ConfigError::new(
                file,
                None,
                "identity",
                "no way to identify callers: configure jwt, api_keys or trusted_header",
            ));
        }
        if errors.is_empty() {
            Ok(Verifier {
                jwt,
                api_key_header,
                api_key_bearer,
                api_key_forward,
                trusted,
            })
        } else {
            Err(errors)
        }
    }

    /// Header names that carry credentials permgate consumes (never forwarded, except
    /// `Authorization` when the config forwards it and it held a JWT).
    pub fn credential_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.api_key_header
            .iter()
            .chain(self.trusted.as_ref().map(|(h, _)| h))
    }

    /// The header an API key may be presented in, if one is configured.
    pub fn api_key_header(&self) -> Option<&HeaderName> {
        self.api_key_header.as_ref()
    }

    /// Are verified API keys forwarded to the CRM as sent (`[identity.api_keys] forward`)?
    pub fn forwards_api_keys(&self) -> bool {
        self.api_key_forward
    }

    /// Find and verify the one credential of a request.
    /// The usual call in one look: one `Authorization: Bearer <token>` header whose token was
    /// verified before (and its `exp` is still ahead), and no other credential header. The
    /// full checks in [`Verifier::identify`] reach the same answer for it: a cached token was
    /// verified through them, so it is visible ASCII with two dots, and `bearer` is the only
    /// scheme that reaches the verifier.
    fn cached_jwt_user(&self, headers: &HeaderMap) -> Option<(Arc<str>, Option<Arc<str>>)> {
        let jwt = self.jwt.as_ref()?;
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let value = values.next()?;
        if values.next().is_some()
            || self
                .api_key_header
                .as_ref()
                .is_some_and(|h| headers.contains_key(h))
            || self
                .trusted
                .as_ref()
                .is_some_and(|(h, _)| headers.contains_key(h))
        {
            return None;
        }
        // `split_once(' ')` below, on bytes: the scheme has no space, so it ends at byte 6.
        let b = value.as_bytes();
        let token = match (b.get(..6), b.get(6), b.get(7..)) {
            (Some(scheme), Some(b' '), Some(token))
                if scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty() =>
            {
                token
            }
            _ => return None,
        };
        jwt.cache.get(token, now_unix(), jwt.epoch())
    }

    /// Read `claim` of every JWT as the call's tenant (`[tenants] from = "claim:…"`).
    pub fn set_tenant_claim(&mut self, claim: &str) {
        if let Some(j) = self.jwt.as_mut() {
            j.tenant_claim = Some(claim.to_string());
        }
    }

    /// Whether JWTs are configured (a `claim:` tenant source needs them).
    pub fn has_jwt(&self) -> bool {
        self.jwt.is_some()
    }

    /// Is `peer` one the trusted identity header is accepted from? (`false` without a trusted
    /// header: a `header:` tenant source is accepted under exactly the same rule.)
    pub fn is_trusted_peer(&self, peer: Option<IpAddr>) -> bool {
        self.trusted
            .as_ref()
            .is_some_and(|(_, nets)| peer.is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))))
    }

    /// Whether a trusted identity header is configured.
    pub fn has_trusted_header(&self) -> bool {
        self.trusted.is_some()
    }

    pub fn identify(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Identified, Rejection> {
        let single = |name: &HeaderName| -> Result<Option<&str>, Rejection> {
            let mut values = headers.get_all(name).iter();
            let Some(first) = values.next() else {
                return Ok(None);
            };
            if values.next().is_some() {
                return Err(Rejection::new(
                    400,
                    "duplicate_header",
                    "a credential header appears more than once",
                ));
            }
            first.to_str().map(Some).map_err(|_| {
                unauthenticated(
                    "invalid_credentials",
                    "a credential header is not visible ASCII",
                )
            })
        };
        if let Some((user, tenant)) = self.cached_jwt_user(headers) {
            return Ok(Identified {
                credential: Credential::User(user),
                method: Method::Jwt,
                tenant,
            });
        }
        let authorization = single(&http::header::AUTHORIZATION)?;
        let api_key = match &self.api_key_header {
            Some(h) => single(h)?,
            None => None,
        };
        let trusted = match &self.trusted {
            Some((h, _)) => single(h)?,
            None => None,
        };
        let presented = usize::from(authorization.is_some())
            + usize::from(api_key.is_some())
            + usize::from(trusted.is_some());
        if presented > 1 {
            return Err(Rejection::new(
                400,
                "ambiguous_credentials",
                "more than one credential was presented; send exactly one",
            ));
        }
        if let Some(value) = trusted {
            let Some((_, nets)) = &self.trusted else {
                return Err(Rejection::internal());
            };
            if !peer.is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))) {
                return Err(unauthenticated(
                    "untrusted_identity_header",
                    "the identity header is accepted only from trusted peers",
                ));
            }
            let user = value.trim();
            if user.is_empty() || user.len() > 256 {
                return Err(unauthenticated(
                    "invalid_credentials",
                    "the identity header is empty or too long",
                ));
            }
            return Ok(Identified {
                credential: Credential::User(user.into()),
                method: Method::TrustedHeader,
                tenant: None,
            });
        }
        if let Some(key) = api_key {
            return Ok(Identified {
                credential: Credential::ApiKey(api_key_digest(key.trim())),
                method: Method::ApiKey,
                tenant: None,
            });
        }
        let Some(auth) = authorization else {
            return Err(unauthenticated(
                "missing_credentials",
                "this route needs a bearer token or an API key",
            ));
        };
        let token = match auth.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() => {
                token
            }
            _ => {
                return Err(unauthenticated(
                    "unsupported_authorization",
                    "the Authorization header must be 'Bearer <token>'",
                ))
            }
        };
        if token.bytes().filter(|b| *b == b'.').count() == 2 {
            if let Some(jwt) = &self.jwt {
                return jwt.verify(token).map(|(user, tenant)| Identified {
                    credential: Credential::User(user),
                    method: Method::Jwt,
                    tenant,
                });
            }
        }
        if self.api_key_bearer {
            return Ok(Identified {
                credential: Credential::ApiKey(api_key_digest(token)),
                method: Method::ApiKey,
                tenant: None,
            });
        }
        Err(unauthenticated(
            "invalid_token",
            "the bearer token is not a valid JWT",
        ))
    }
}

/// Whether the JOSE header of `token` (already decoded once by `decode_header`) has `crit`.
fn header_has_crit(token: &str) -> bool {
    use base64::Engine;
    let Some(part) = token.split('.').next() else {
        return false;
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part) else {
        return true; // decode_header accepted it; anything else here is suspect: refuse
    };
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes) {
        Ok(map) => map.contains_key("crit"),
        Err(_) => true,
    }
}

impl JwtVerifier {
    /// The JWKS key set's epoch (0 without a JWKS): cached tokens of another epoch are missed.
    fn epoch(&self) -> u64 {
        self.jwks.as_ref().map_or(0, |s| s.epoch())
    }

    fn verify(&self, token: &str) -> Result<(Arc<str>, Option<Arc<str>>), Rejection> {
        let now = now_unix();
        // Read before verifying: if the keys change meanwhile, the entry is of the old epoch
        // and never served.
        let epoch = self.epoch();
        if let Some(hit) = self.cache.get(token.as_bytes(), now, epoch) {
            return Ok(hit);
        }
        let (user, tenant, exp) = self.verify_uncached(token)?;
        let user: Arc<str> = user.into();
        let tenant: Option<Arc<str>> = tenant.map(Into::into);
        self.cache.put(token.as_bytes(), &user, &tenant, exp, epoch);
        Ok((user, tenant))
    }

    fn verify_uncached(&self, token: &str) -> Result<(String, Option<String>, u64), Rejection> {
        use jsonwebtoken::errors::ErrorKind;
        let invalid = |m: &'static str| unauthenticated("invalid_token", m);
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the token header is malformed or names an unknown algorithm"))?;
        if header.jku.is_some()
            || header.x5u.is_some()
            || header.jwk.is_some()
            || header.x5c.is_some()
        {
            return Err(invalid(
                "the token header names a key (jku, x5u, jwk or x5c); permgate never trusts those",
            ));
        }
        // `crit` names extensions the recipient must understand (RFC 7515 §4.1.11); permgate
        // understands none, so a token that carries it is refused. (`Header` drops unknown
        // members, hence the look at the raw header.)
        if header_has_crit(token) {
            return Err(invalid(
                "the token header has 'crit'; permgate understands no JWS extension",
            ));
        }
        // The configured keys first, then those fetched from the JWKS source. A token without
        // `kid` uses the configured key if exactly one is configured (whatever was fetched); a
        // fetched key is only ever picked by its `kid`.
        let fetched = self.jwks.as_ref().map(|s| s.keys());
        let fetched_key = |kid: Option<&String>| -> Option<(Algorithm, &DecodingKey, &Validation)> {
            let (alg, key) = fetched.as_deref()?.get(kid?)?;
            let (_, validation) = self.jwks_validation.iter().find(|(a, _)| a == alg)?;
            Some((*alg, key, validation))
        };
        let configured = match &header.kid {
            Some(kid) => self.keys.get(kid),
            None if self.keys.len() == 1 => self.keys.values().next(),
            None => None,
        };
        let (alg, key, validation) = match configured {
            Some(k) => (k.alg, &k.key, &k.validation),
            None => match fetched_key(header.kid.as_ref()) {
                Some(found) => found,
                None => {
                    // Perhaps the IdP rotated its keys: fetch early (rate-limited).
                    if let (Some(store), Some(_)) = (&self.jwks, &header.kid) {
                        store.want_refresh();
                    }
                    return Err(invalid("the token's key id (kid) is missing or unknown"));
                }
            },
        };
        if header.alg != alg {
            return Err(invalid(
                "the token's algorithm is not the one pinned for its key",
            ));
        }
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token, key, validation,
        )
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => invalid("the token has expired"),
            ErrorKind::ImmatureSignature => invalid("the token is not valid yet (nbf)"),
            ErrorKind::InvalidIssuer => invalid("the token's issuer is not accepted"),
            ErrorKind::InvalidAudience => invalid("the token's audience is not accepted"),
            ErrorKind::MissingRequiredClaim(_) => {
                invalid("the token lacks a required claim (exp; iss and aud when configured)")
            }
            ErrorKind::InvalidSignature => invalid("the token's signature is invalid"),
            ErrorKind::InvalidAlgorithm => {
                invalid("the token's algorithm is not the one pinned for its key")
            }
            _ => invalid("the token is malformed"),
        })?;
        // `exp` is required and was checked; a token without a usable one is never cached.
        let exp = data.claims.get("exp").and_then(|e| e.as_u64()).unwrap_or(0);
        // `iat` (not checked by the JWT library), when present: a number, and not in the
        // future beyond the leeway (a token issued later than now is forged or from a skewed
        // clock).
        match data.claims.get("iat") {
            None => {}
            Some(serde_json::Value::Number(n)) => {
                let iat = n.as_f64().unwrap_or(f64::INFINITY);
                if iat > (now_unix() + validation.leeway) as f64 {
                    return Err(invalid("the token is issued in the future (iat)"));
                }
            }
            Some(_) => return Err(invalid("the token's iat is not a number")),
        }
        // `required_claims`: each present, a string, exactly the configured value (a refresh
        // token signed with the access tokens' key is not an access token).
        for (claim, value) in &self.required_claims {
            match data.claims.get(claim) {
                Some(serde_json::Value::String(v)) if v == value => {}
                _ => {
                    return Err(invalid(
                        "the token lacks a required claim value (identity.jwt.required_claims)",
                    ))
                }
            }
        }
        let user = match data.claims.get(&self.user_claim) {
            Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= 256 => s.clone(),
            Some(serde_json::Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
            _ => {
                return Err(invalid(
                    "the token's user claim is missing or not a string or integer",
                ))
            }
        };
        // The tenant claim, when configured: a string or an integer like the user claim; absent
        // is `None` (the call's tenant then comes from another source, or it is missing); any
        // other value is a token we do not understand.
        let tenant = match self.tenant_claim.as_ref().map(|c| data.claims.get(c)) {
            None | Some(None) | Some(Some(serde_json::Value::Null)) => None,
            Some(Some(serde_json::Value::String(s))) if !s.is_empty() && s.len() <= 256 => {
                Some(s.clone())
            }
            Some(Some(serde_json::Value::Number(n))) if n.is_u64() || n.is_i64() => {
                Some(n.to_string())
            }
            Some(Some(_)) => {
                return Err(invalid(
                    "the token's tenant claim is not a string or integer",
                ))
            }
        };
        Ok((user, tenant, exp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    fn keys_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/keys")
    }

    fn verifier(extra: &str) -> Verifier {
        let text = format!(
            r#"
[jwt]
issuer = "iss-1"
audience = "aud-1"
user_claim = "sub"
[[jwt.keys]]
kid = "hs"
alg = "HS256"
secret = "{SECRET}"
[[jwt.keys]]
kid = "rs"
alg = "RS256"
public_key_file = "rs256-public.pem"
[[jwt.keys]]
kid = "es"
alg = "ES256"
public_key_file = "es256-public.pem"
[api_keys]
header = "x-api-key"
[trusted_header]
name = "x-auth-user"
trusted_cidrs = ["10.1.0.0/16"]
{extra}
"#
        );
        let raw: IdentitySection = toml::from_str(&text).unwrap();
        Verifier::build(&raw, "t.toml", &text, &keys_dir()).unwrap()
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn claims() -> serde_json::Value {
        json!({"sub": "u-1", "iss": "iss-1", "aud": "aud-1", "exp": now() + 600, "nbf": now() - 10})
    }

    fn hs(claims: &serde_json::Value, kid: Option<&str>) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid.map(str::to_string);
        encode(&h, claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    }

    fn signed(alg: Algorithm, kid: &str, file: &str, claims: &serde_json::Value) -> String {
        let pem = std::fs::read(keys_dir().join(file)).unwrap();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        encode(&h, claims, &key).unwrap()
    }

    fn auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    fn code(r: Result<Identified, Rejection>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(e) => e.code,
        }
    }

    #[test]
    fn valid_tokens_of_each_algorithm() {
        let v = verifier("");
        for token in [
            hs(&claims(), Some("hs")),
            signed(Algorithm::RS256, "rs", "rs256-private.pem", &claims()),
            signed(Algorithm::ES256, "es", "es256-private.pem", &claims()),
        ] {
            let id = v.identify(&auth(&format!("Bearer {token}")), None).unwrap();
            assert_eq!(id.credential, Credential::User("u-1".into()));
            assert_eq!(id.method, Method::Jwt);
        }
    }

    #[test]
    fn invalid_tokens_are_401() {
        let v = verifier("");
        let mut expired = claims();
        expired["exp"] = json!(now() - 3600);
        let mut future = claims();
        future["nbf"] = json!(now() + 3600);
        let mut wrong_iss = claims();
        wrong_iss["iss"] = json!("other");
        let mut wrong_aud = claims();
        wrong_aud["aud"] = json!("other");
        let mut no_iss = claims();
        no_iss.as_object_mut().unwrap().remove("iss");
        let mut no_aud = claims();
        no_aud.as_object_mut().unwrap().remove("aud");
        let mut issued_later = claims();
        issued_later["iat"] = json!(now() + 3600);
        let mut iat_text = claims();
        iat_text["iat"] = json!("yesterday");
        let mut no_exp = claims();
        no_exp.as_object_mut().unwrap().remove("exp");
        let mut no_sub = claims();
        no_sub.as_object_mut().unwrap().remove("sub");
        // An RS256 token whose header claims HS256, signed with the RSA public key as HMAC secret
        // (the classic algorithm confusion): the kid pins RS256, so it is refused.
        let public = std::fs::read(keys_dir().join("rs256-public.pem")).unwrap();
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("rs".into());
        let confused = encode(&h, &claims(), &EncodingKey::from_secret(&public)).unwrap();
        let unsigned = {
            let t = hs(&claims(), Some("hs"));
            let mut parts: Vec<&str> = t.split('.').collect();
            parts[0] = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
            format!("{}.{}.", parts[0], parts[1])
        };
        let tampered = {
            let t = hs(&claims(), Some("hs"));
            let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
            let mut c = claims();
            c["sub"] = json!("u-admin");
            parts[1] = base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                serde_json::to_vec(&c).unwrap(),
            );
            parts.join(".")
        };
        let mut jku = Header::new(Algorithm::HS256);
        jku.kid = Some("hs".into());
        jku.jku = Some("https://evil.example/jwks.json".into());
        let with_jku = encode(
            &jku,
            &claims(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let with_crit = {
            let b64 = |v: &serde_json::Value| {
                base64::Engine::encode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    serde_json::to_vec(v).unwrap(),
                )
            };
            let input = format!(
                "{}.{}",
                b64(&json!({"alg": "HS256", "kid": "hs", "crit": ["exp"]})),
                b64(&claims())
            );
            let key = EncodingKey::from_secret(SECRET.as_bytes());
            let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::HS256);
            format!("{input}.{}", sig.unwrap())
        };
        for (name, token) in [
            ("crit header", with_crit),
            ("expired", hs(&expired, Some("hs"))),
            ("not yet valid", hs(&future, Some("hs"))),
            ("wrong issuer", hs(&wrong_iss, Some("hs"))),
            ("wrong audience", hs(&wrong_aud, Some("hs"))),
            ("no iss while issuer is configured", hs(&no_iss, Some("hs"))),
            (
                "no aud while audience is configured",
                hs(&no_aud, Some("hs")),
            ),
            ("iat in the future", hs(&issued_later, Some("hs"))),
            ("iat not a number", hs(&iat_text, Some("hs"))),
            ("no exp", hs(&no_exp, Some("hs"))),
            ("no user claim", hs(&no_sub, Some("hs"))),
            ("unknown kid", hs(&claims(), Some("nope"))),
            ("no kid with several keys", hs(&claims(), None)),
            ("algorithm confusion", confused),
            ("alg none", unsigned),
            ("tampered payload", tampered),
            ("jku header", with_jku),
            ("garbage", "a.b.c".to_string()),
        ] {
            let r = v.identify(&auth(&format!("Bearer {token}")), None);
            assert_eq!(code(r), "invalid_token", "{name}");
        }
    }

    /// A CRM's own tokens as they are (Django simplejwt): no `iss`, `aud`, `nbf` or `kid`, the
    /// user in `user_id`. With no issuer or audience configured and one key they are accepted;
    /// `exp` stays required and `nbf`/`iat` are checked when present.
    #[test]
    fn tokens_without_iss_aud_nbf_kid_when_the_config_names_none() {
        let text = format!(
            "[jwt]\nuser_claim = \"user_id\"\n[[jwt.keys]]\nkid = \"crm\"\nalg = \"HS256\"\n\
             secret = \"{SECRET}\"\n"
        );
        let raw: IdentitySection = toml::from_str(&text).unwrap();
        let v = Verifier::build(&raw, "t.toml", &text, &keys_dir()).unwrap();
        let simplejwt = json!({"token_type": "access", "exp": now() + 300, "iat": now(),
                               "jti": "5f0c", "user_id": 42});
        let token = |c: &serde_json::Value| format!("Bearer {}", hs(c, None));
        let id = v.identify(&auth(&token(&simplejwt)), None).unwrap();
        assert_eq!(id.credential, Credential::User("42".into()));
        // Any iss / aud is accepted when not configured (check-config says so).
        let mut with_aud = simplejwt.clone();
        with_aud["aud"] = json!("whatever");
        with_aud["iss"] = json!("whoever");
        assert_eq!(code(v.identify(&auth(&token(&with_aud)), None)), "ok");
        let notes = v.notes().join("\n");
        assert!(notes.contains("jwt: iss NOT checked"), "{notes}");
        assert!(notes.contains("jwt: aud NOT checked"), "{notes}");
        assert!(verifier("")
            .notes()
            .join("\n")
            .contains("iss required and checked"));
        let broken = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut c = simplejwt.clone();
            edit(&mut c);
            code(v.identify(&auth(&token(&c)), None))
        };
        assert_eq!(
            broken(&|c| drop(c.as_object_mut().unwrap().remove("exp"))),
            "invalid_token"
        );
        assert_eq!(broken(&|c| c["nbf"] = json!(now() + 3600)), "invalid_token");
        assert_eq!(broken(&|c| c["iat"] = json!(now() + 3600)), "invalid_token");
        assert_eq!(broken(&|c| c["exp"] = json!(now() - 3600)), "invalid_token");
        // Within the leeway (30 s by default) an iat a little ahead is clock skew, accepted.
        assert_eq!(broken(&|c| c["iat"] = json!(now() + 5)), "ok");
    }

    #[test]
    fn verified_tokens_are_cached_until_exp_and_failures_never() {
        let v = verifier("");
        let jwt = v.jwt.as_ref().unwrap();
        let t = hs(&claims(), Some("hs"));
        assert!(jwt.cache.get(t.as_bytes(), now() as u64, 0).is_none());
        assert_eq!(
            v.identify(&auth(&format!("Bearer {t}")), None)
                .unwrap()
                .credential,
            Credential::User("u-1".into())
        );
        assert_eq!(
            jwt.cache
                .get(t.as_bytes(), now() as u64, 0)
                .map(|(u, _)| u)
                .as_deref(),
            Some("u-1")
        );
        // Past exp the entry is not used.
        assert!(jwt.cache.get(t.as_bytes(), now() as u64 + 601, 0).is_none());
        let mut expired = claims();
        expired["exp"] = json!(now() - 3600);
        let bad = hs(&expired, Some("hs"));
        assert!(v.identify(&auth(&format!("Bearer {bad}")), None).is_err());
        assert!(
            jwt.cache.get(bad.as_bytes(), 0, 0).is_none(),
            "failures are never cached"
        );
        // A tampered token (different bytes) is verified on its own.
        let tampered = format!("{}x", t);
        assert!(v
            .identify(&auth(&format!("Bearer {tampered}")), None)
            .is_err());
        // Same last bytes (what the cache hashes), different token: not the cached entry.
        let (head, tail) = t.split_at(t.len() - HASHED_TAIL);
        let other = format!("{}{tail}", head.replace('e', "f"));
        assert_ne!(other, t);
        assert!(jwt.cache.get(other.as_bytes(), now() as u64, 0).is_none());
        assert!(v.identify(&auth(&format!("Bearer {other}")), None).is_err());
    }

    /// With a cached token, the answer is still the full checks' answer: another credential
    /// or a repeated header is refused, the scheme is read without case.
    #[test]
    fn a_cached_token_changes_no_answer() {
        let v = verifier("");
        let t = hs(&claims(), Some("hs"));
        let bearer = format!("Bearer {t}");
        assert!(v.identify(&auth(&bearer), None).is_ok());
        let user = Credential::User("u-1".into());
        let lower = format!("bearer {t}");
        assert_eq!(v.identify(&auth(&lower), None).unwrap().credential, user);
        let mut both = auth(&bearer);
        both.insert("x-api-key", http::HeaderValue::from_static("k1"));
        assert_eq!(code(v.identify(&both, None)), "ambiguous_credentials");
        let mut trusted = auth(&bearer);
        trusted.insert("x-auth-user", http::HeaderValue::from_static("u-2"));
        assert_eq!(code(v.identify(&trusted, None)), "ambiguous_credentials");
        let mut twice = auth(&bearer);
        twice.append(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&bearer).unwrap(),
        );
        assert_eq!(code(v.identify(&twice, None)), "duplicate_header");
        let spaced = format!("Bearer  {t}");
        assert_eq!(code(v.identify(&auth(&spaced), None)), "invalid_token");
    }

    #[test]
    fn integer_user_claims_and_custom_claim_names() {
        let text = format!(
            "[jwt]\nissuer = \"iss-1\"\naudience = \"aud-1\"\nuser_claim = \"user_id\"\n[[jwt.keys]]\nkid = \"hs\"\nalg = \"HS256\"\nsecret = \"{SECRET}\"\n"
        );
        let raw: IdentitySection = toml::from_str(&text).unwrap();
        let v = Verifier::build(&raw, "t", &text, &keys_dir()).unwrap();
        let mut c = claims();
        c["user_id"] = json!(4242);
        let t = hs(&c, None); // a single key: no kid needed
        let id = v.identify(&auth(&format!("Bearer {t}")), None).unwrap();
        assert_eq!(id.credential, Credential::User("4242".into()));
    }

    #[test]
    fn api_keys_and_trusted_headers() {
        let v = verifier("");
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "k1".parse().unwrap());
        assert_eq!(
            v.identify(&h, None).unwrap().credential,
            Credential::ApiKey(api_key_digest("k1"))
        );
        // A non-JWT bearer is an API key.
        assert_eq!(
            v.identify(&auth("Bearer k2"), None).unwrap().credential,
            Credential::ApiKey(api_key_digest("k2"))
        );
        let mut t = HeaderMap::new();
        t.insert("x-auth-user", "u-7".parse().unwrap());
        let trusted: IpAddr = "10.1.2.3".parse().unwrap();
        let untrusted: IpAddr = "10.2.0.1".parse().unwrap();
        assert_eq!(
            v.identify(&t, Some(trusted)).unwrap().credential,
            Credential::User("u-7".into())
        );
        assert_eq!(
            code(v.identify(&t, Some(untrusted))),
            "untrusted_identity_header"
        );
        assert_eq!(code(v.identify(&t, None)), "untrusted_identity_header");
    }

    /// `[api_keys] forward`: `strip` by default, `forward` on request (and said by
    /// check-config), any other value refused.
    #[test]
    fn api_keys_forward_is_strip_unless_asked() {
        let build = |forward: &str| {
            let text = format!("[api_keys]\nheader = \"x-api-key\"\n{forward}");
            toml::from_str::<IdentitySection>(&text)
                .map_err(|e| e.to_string())
                .map(|raw| Verifier::build(&raw, "t.toml", &text, &keys_dir()).ok())
        };
        let v = build("").unwrap().unwrap();
        assert!(!v.forwards_api_keys());
        assert!(v.notes().is_empty());
        let v = build("forward = \"strip\"").unwrap().unwrap();
        assert!(!v.forwards_api_keys());
        let v = build("forward = \"forward\"").unwrap().unwrap();
        assert!(v.forwards_api_keys());
        assert_eq!(v.api_key_header().map(|h| h.as_str()), Some("x-api-key"));
        assert!(v.notes()[0].contains("can replay"), "{:?}", v.notes());
        let e = build("forward = \"passthrough\"").err().unwrap();
        assert!(e.contains("unknown variant") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn zero_two_or_malformed_credentials() {
        let v = verifier("");
        assert_eq!(
            code(v.identify(&HeaderMap::new(), None)),
            "missing_credentials"
        );
        let mut both = auth(&format!("Bearer {}", hs(&claims(), Some("hs"))));
        both.insert("x-api-key", "k".parse().unwrap());
        assert_eq!(code(v.identify(&both, None)), "ambiguous_credentials");
        let mut two = HeaderMap::new();
        two.append("x-api-key", "a".parse().unwrap());
        two.append("x-api-key", "b".parse().unwrap());
        assert_eq!(code(v.identify(&two, None)), "duplicate_header");
        assert_eq!(
            code(v.identify(&auth("Basic dTpw"), None)),
            "unsupported_authorization"
        );
        assert_eq!(
            code(v.identify(&auth("Bearer"), None)),
            "unsupported_authorization"
        );
    }

    #[test]
    fn bad_identity_config_is_located() {
        let text = "[jwt]\nissuer = \"i\"\naudience = \"a\"\n\n[[jwt.keys]]\nkid = \"k\"\nalg = \"none\"\nsecret = \"x\"\n\n[[jwt.keys]]\nkid = \"s\"\nalg = \"HS256\"\nsecret = \"short\"\n";
        let raw: IdentitySection = toml::from_str(text).unwrap();
        let errs = Verifier::build(&raw, "t.toml", text, &keys_dir())
            .err()
            .unwrap();
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("t.toml:5:") && m.contains("alg 'none'")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("t.toml:10:") && m.contains("32 bytes")),
            "{msgs:?}"
        );
    }
}
