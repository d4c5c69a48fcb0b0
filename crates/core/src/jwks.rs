//! Keys from an identity provider's JWKS URL, or found by OIDC discovery from the issuer.
//!
//! The store is data only (no I/O): the control thread fetches (the server's `control`) and hands
//! the document to [`JwksStore::apply`]; the request path reads the current keys with one
//! atomic load. It is refreshed every `jwks_refresh_seconds`, and early — at most once per
//! `jwks_min_refresh_seconds` — when a token names a key id it does not know (a rotation at the
//! IdP); a failed fetch or a document without one usable key keeps the last good set. Bounded:
//! at most [`MAX_JWKS_BYTES`] of document and [`MAX_JWKS_KEYS`] keys.
//!
//! One store per source, shared by every config that names it, so a config reload keeps the
//! keys it had instead of refusing tokens until the next fetch.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The largest JWKS or discovery document read.
pub const MAX_JWKS_BYTES: usize = 1 << 20;
/// The most keys a JWKS may hold (IdPs publish a handful: current, next, previous).
pub const MAX_JWKS_KEYS: usize = 64;

/// Where the keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS document at this URL.
    Url(String),
    /// OIDC discovery: `<issuer>/.well-known/openid-configuration` names the `jwks_uri`.
    Discovery(String),
}

impl JwksSource {
    /// The first URL fetched.
    pub fn first_url(&self) -> String {
        match self {
            JwksSource::Url(u) => u.clone(),
            JwksSource::Discovery(issuer) => format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            ),
        }
    }
}

/// A URL permgate may fetch keys from: `https://`, or `http://` to a loopback address only
/// (keys fetched in clear text from anywhere else could be swapped on the way).
pub fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("'{url}' is not a URL"))?;
    let host = uri.host().unwrap_or("");
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(()),
        Some("http") => {
            let h = host.trim_start_matches('[').trim_end_matches(']');
            if h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
            {
                Ok(())
            } else {
                Err(format!(
                    "'{url}': keys are fetched over https (http only to a loopback address)"
                ))
            }
        }
        _ => Err(format!("'{url}' is not an https:// URL")),
    }
}

/// The keys of one fetch: key id → (pinned algorithm, key).
pub type JwksKeys = HashMap<String, (Algorithm, DecodingKey)>;

/// What `/status` shows of a store.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct JwksStatus {
    pub source: String,
    pub keys: Vec<String>,
    pub fetched_unix: Option<u64>,
    pub fetches: u64,
    pub failures: u64,
    pub last_error: Option<String>,
}

struct Schedule {
    refresh: Duration,
    min_refresh: Duration,
    last_attempt: Option<Instant>,
    /// What the live keys were made of ([`parse_jwks`]): a new document is taken when this
    /// differs (new material under a known `kid` included).
    fingerprint: [u8; 32],
    status: JwksStatus,
}

/// The keys of one source, shared by the configs that name it.
pub struct JwksStore {
    source: JwksSource,
    keys: ArcSwap<JwksKeys>,
    /// Bumped when the key set changes: verifiers clear their token cache (a token verified
    /// with a key the IdP has withdrawn is not served from the cache).
    epoch: AtomicU64,
    /// A token named an unknown key id: fetch early (rate-limited).
    wanted: AtomicBool,
    schedule: Mutex<Schedule>,
}

fn registry() -> &'static Mutex<Vec<Weak<JwksStore>>> {
    static STORES: OnceLock<Mutex<Vec<Weak<JwksStore>>>> = OnceLock::new();
    STORES.get_or_init(|| Mutex::new(Vec::new()))
}

impl JwksStore {
    /// The store for `source`: the live one if a config already names it (its keys kept, its
    /// intervals updated), else a new empty one.
    pub fn shared(source: JwksSource, refresh: Duration, min_refresh: Duration) -> Arc<JwksStore> {
        let mut stores = registry().lock().unwrap_or_else(|e| e.into_inner());
        stores.retain(|w| w.strong_count() > 0);
        if let Some(s) = stores
            .iter()
            .filter_map(Weak::upgrade)
            .find(|s| s.source == source)
        {
            let mut sch = s.schedule();
            sch.refresh = refresh;
            sch.min_refresh = min_refresh;
            drop(sch);
            return s;
        }
        let store = Arc::new(JwksStore {
            keys: ArcSwap::from_pointee(HashMap::new()),
            epoch: AtomicU64::new(0),
            wanted: AtomicBool::new(false),
            schedule: Mutex::new(Schedule {
                refresh,
                min_refresh,
                last_attempt: None,
                fingerprint: [0; 32],
                status: JwksStatus {
                    source: source.first_url(),
                    ..JwksStatus::default()
                },
            }),
            source,
        });
        stores.push(Arc::downgrade(&store));
        store
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    /// The current keys (one atomic load).
    pub fn keys(&self) -> arc_swap::Guard<Arc<JwksKeys>> {
        self.keys.load()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether a fetch has ever succeeded (`/readyz` waits for it).
    pub fn loaded(&self) -> bool {
        self.schedule().status.fetched_unix.is_some()
    }

    /// A token named a key id not in the set: ask for an early fetch.
    pub fn want_refresh(&self) {
        self.wanted.store(true, Ordering::Relaxed);
    }

    /// Is a fetch due at `now`? Never fetched: yes. Otherwise every `refresh`; early, when a
    /// token named an unknown key or the last fetch failed, but not before `min_refresh` since
    /// the last attempt. Marks the attempt when it answers yes.
    pub fn due(&self, now: Instant) -> bool {
        let mut s = self.schedule();
        let due = match s.last_attempt {
            None => true,
            Some(last) => {
                let since = now.saturating_duration_since(last);
                let early = self.wanted.load(Ordering::Relaxed) || s.status.last_error.is_some();
                since >= s.refresh || (early && since >= s.min_refresh)
            }
        };
        if due {
            s.last_attempt = Some(now);
            self.wanted.store(false, Ordering::Relaxed);
        }
        due
    }

    /// Take the outcome of a fetch: a JWKS document, or why it failed. A document is used only
    /// if it yields at least one key; otherwise the last good set stays. Returns what to log.
    pub fn apply(&self, fetched: Result<&[u8], String>) -> Result<String, String> {
        let parsed = fetched.and_then(parse_jwks);
        let mut s = self.schedule();
        s.status.fetches += 1;
        match parsed {
            Ok(Parsed {
                keys,
                skipped,
                fingerprint,
            }) => {
                let mut ids: Vec<String> = keys.keys().cloned().collect();
                ids.sort();
                if fingerprint != s.fingerprint {
                    self.keys.store(Arc::new(keys));
                    self.epoch.fetch_add(1, Ordering::AcqRel);
                    s.fingerprint = fingerprint;
                }
                s.status.keys = ids.clone();
                s.status.fetched_unix = Some(unix_now());
                s.status.last_error = None;
                let mut note = format!("{} key(s): {}", ids.len(), ids.join(", "));
                if !skipped.is_empty() {
                    note.push_str(&format!("; skipped: {}", skipped.join("; ")));
                }
                Ok(note)
            }
            Err(e) => {
                s.status.failures += 1;
                s.status.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    pub fn status(&self) -> JwksStatus {
        self.schedule().status.clone()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `jwks_uri` of the OIDC discovery document of `issuer`: the document must name that very
/// issuer (OIDC Discovery §4.3), and a document fetched over https must name an https URI.
pub fn discovered_jwks_uri(document: &[u8], issuer: &str) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Discovery {
        issuer: String,
        jwks_uri: String,
    }
    let d: Discovery = serde_json::from_slice(document)
        .map_err(|e| format!("the discovery document has no usable issuer and jwks_uri: {e}"))?;
    if d.issuer != issuer {
        return Err(format!(
            "the discovery document names the issuer '{}', not '{issuer}'",
            d.issuer
        ));
    }
    check_url(&d.jwks_uri)?;
    if issuer.starts_with("https:") && !d.jwks_uri.starts_with("https:") {
        return Err(format!(
            "the discovery document of an https issuer names '{}'",
            d.jwks_uri
        ));
    }
    Ok(d.jwks_uri)
}

/// One JWK as a verification key: its key id and pinned algorithm. `infer_alg`: a key without
/// `alg` takes the one algorithm its type allows here (RSA → RS256, EC P-256 → ES256), as IdPs
/// that omit `alg` intend. Symmetric keys (HS256) are never taken from a JWKS.
pub fn jwk_key(jwk: &Jwk, infer_alg: bool) -> Result<(String, Algorithm, DecodingKey), String> {
    let kid = jwk
        .common
        .key_id
        .clone()
        .filter(|k| !k.is_empty())
        .ok_or("no 'kid'")?;
    let rsa = matches!(jwk.algorithm, AlgorithmParameters::RSA(_));
    let p256 = matches!(&jwk.algorithm, AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256);
    let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
        // The key's type must be the algorithm's: an `oct` (symmetric) or P-384 key labelled
        // RS256 / ES256 is not taken.
        (Some(ka), _) => match Algorithm::from_str(&ka.to_string()) {
            Ok(a @ Algorithm::RS256) if rsa => a,
            Ok(a @ Algorithm::ES256) if p256 => a,
            Ok(Algorithm::RS256 | Algorithm::ES256) => {
                return Err(format!("'{kid}': alg '{ka}' does not match its key type"))
            }
            _ => return Err(format!("'{kid}': alg '{ka}' is not one of RS256, ES256")),
        },
        (None, _) if infer_alg && rsa => Algorithm::RS256,
        (None, _) if infer_alg && p256 => Algorithm::ES256,
        (None, _) if infer_alg => {
            return Err(format!(
                "'{kid}': no 'alg', and its key type is not RSA or EC P-256"
            ))
        }
        (None, _) => {
            return Err(format!(
                "'{kid}': needs both 'kid' and 'alg' (the algorithm is pinned per key)"
            ))
        }
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("'{kid}': {e}"))?;
    Ok((kid, alg, key))
}

/// What a JWKS document yields.
pub struct Parsed {
    pub keys: JwksKeys,
    /// Why other keys were skipped (encryption keys, other algorithms).
    pub skipped: Vec<String>,
    /// A digest of the keys taken (kid, algorithm, key parameters), to tell a new document
    /// from the live one.
    pub fingerprint: [u8; 32],
}

/// The signing keys of a fetched JWKS document. Refused whole when it is not a JWKS, holds
/// more than [`MAX_JWKS_KEYS`] keys, or none usable.
pub fn parse_jwks(document: &[u8]) -> Result<Parsed, String> {
    if document.len() > MAX_JWKS_BYTES {
        return Err(format!("the JWKS is over {MAX_JWKS_BYTES} bytes"));
    }
    let set: JwkSet =
        serde_json::from_slice(document).map_err(|e| format!("not a JWKS document: {e}"))?;
    if set.keys.len() > MAX_JWKS_KEYS {
        return Err(format!(
            "the JWKS holds {} keys, over {MAX_JWKS_KEYS}",
            set.keys.len()
        ));
    }
    let mut keys = HashMap::new();
    let mut skipped = Vec::new();
    let mut taken: Vec<String> = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            skipped.push(format!("keys[{i}]: an encryption key"));
            continue;
        }
        match jwk_key(jwk, true) {
            Ok((kid, alg, key)) => {
                // Serializing a parsed JWK's parameters cannot fail.
                let params = serde_json::to_string(&jwk.algorithm).unwrap_or_default();
                taken.push(format!("{kid}\u{0}{alg:?}\u{0}{params}"));
                if keys.insert(kid.clone(), (alg, key)).is_some() {
                    return Err(format!("key id '{kid}' appears twice"));
                }
            }
            Err(e) => skipped.push(format!("keys[{i}]: {e}")),
        }
    }
    taken.sort();
    let fingerprint: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(taken.join("\u{1}").as_bytes()).into()
    };
    if keys.is_empty() {
        return Err(format!(
            "the JWKS has no usable signing key ({})",
            skipped.join("; ")
        ));
    }
    Ok(Parsed {
        keys,
        skipped,
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_https_or_loopback_http() {
        assert!(check_url("https://idp.example.com/jwks").is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_url("http://[::1]:8080/jwks").is_ok());
        assert!(check_url("http://localhost/jwks").is_ok());
        assert!(check_url("http://idp.example.com/jwks").is_err());
        assert!(check_url("ftp://idp.example.com/jwks").is_err());
        assert!(check_url("jwks.json").is_err());
    }

    #[test]
    fn bad_documents_keep_the_last_good_set() {
        let store = JwksStore::shared(
            JwksSource::Url("https://unit.test/a".into()),
            Duration::from_secs(300),
            Duration::from_secs(10),
        );
        assert!(store.due(Instant::now()));
        assert!(!store.loaded());
        for bad in [
            &b"not json"[..],
            br#"{"keys":[]}"#,
            br#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#,
        ] {
            assert!(store.apply(Ok(bad)).is_err());
        }
        assert!(store.apply(Err("down".into())).is_err());
        assert!(store.keys().is_empty() && !store.loaded());
        assert_eq!(store.status().failures, 4);
        // Early retry after a failure, but not before min_refresh.
        assert!(!store.due(Instant::now()));
        assert!(store.due(Instant::now() + Duration::from_secs(11)));
        // The same source is the same store.
        let again = JwksStore::shared(
            JwksSource::Url("https://unit.test/a".into()),
            Duration::from_secs(60),
            Duration::from_secs(5),
        );
        assert!(Arc::ptr_eq(&store, &again));
    }
}
