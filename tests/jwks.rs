//! Keys from an IdP (issue 16 item 1): OIDC discovery from the issuer, the JWKS fetched and
//! refreshed, a rotation followed on the first unknown `kid` (rate-limited), the last good keys
//! kept while the IdP is down. A real local IdP on 127.0.0.1 and the real gateway binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};

use common::*;

/// A local IdP: the discovery document, and a JWKS whose content and status the test sets.
struct Idp {
    addr: SocketAddr,
    jwks: Arc<Mutex<(u16, String)>>,
    jwks_hits: Arc<AtomicUsize>,
}

async fn idp() -> Idp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let jwks = Arc::new(Mutex::new((200u16, r#"{"keys":[]}"#.to_string())));
    let jwks_hits = Arc::new(AtomicUsize::new(0));
    let (j, hits) = (jwks.clone(), jwks_hits.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (j, hits) = (j.clone(), hits.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (status, body) = match req.uri().path() {
                        "/.well-known/openid-configuration" => (
                            200,
                            format!(
                                r#"{{"issuer":"http://{addr}","jwks_uri":"http://{addr}/jwks"}}"#
                            ),
                        ),
                        "/jwks" => {
                            hits.fetch_add(1, Ordering::SeqCst);
                            j.lock().unwrap().clone()
                        }
                        _ => (404, String::new()),
                    };
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Idp {
        addr,
        jwks,
        jwks_hits,
    }
}

/// An ES256 key of the IdP: its JWK (no `alg`: inferred from the curve) and a token signer.
struct Key {
    kid: String,
    pair: rcgen::KeyPair,
}

impl Key {
    fn new(kid: &str) -> Key {
        Key {
            kid: kid.into(),
            pair: rcgen::KeyPair::generate().unwrap(),
        }
    }
    fn jwk(&self) -> serde_json::Value {
        let raw = self.pair.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        serde_json::json!({"kty": "EC", "crv": "P-256", "use": "sig", "kid": self.kid,
                           "x": b64(&raw[1..33]), "y": b64(&raw[33..65])})
    }
    fn bearer(&self, issuer: &str, user: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        let claims = serde_json::json!({"sub": user, "iss": issuer, "aud": "crm-api",
                                        "exp": now + 600, "iat": now});
        let key =
            jsonwebtoken::EncodingKey::from_ec_pem(self.pair.serialize_pem().as_bytes()).unwrap();
        format!(
            "Bearer {}",
            jsonwebtoken::encode(&h, &claims, &key).unwrap()
        )
    }
}

fn jwks_of(keys: &[&Key]) -> String {
    serde_json::json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

async fn status_of(h: &Harness, bearer: &str) -> u16 {
    client()
        .get(h.url("/api/v1/customers/1"))
        .header("authorization", bearer)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_oidc_discovery_follow_a_rotation_and_survive_an_outage() {
    let idp = idp().await;
    let issuer = format!("http://{}", idp.addr);
    let (k1, k2, k3) = (Key::new("k1"), Key::new("k2"), Key::new("k3"));
    // An encryption key and a symmetric key in the set are skipped, not trusted.
    let mut set: serde_json::Value = serde_json::from_str(&jwks_of(&[&k1])).unwrap();
    set["keys"].as_array_mut().unwrap().push(
        serde_json::json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}),
    );
    *idp.jwks.lock().unwrap() = (200, set.to_string());

    let (admin, admin_port) = admin_section();
    let text = demo_config_text().replace(
        "issuer = \"https://crm.example.test\"",
        &format!("issuer = \"{issuer}\"\noidc_discovery = true\njwks_min_refresh_seconds = 1\njwks_refresh_seconds = 3600"),
    ) + &admin;
    assert!(text.contains("oidc_discovery = true"));
    let h = Harness::with_config_text(&text, &[]).await;

    // The first fetch at start: k1 tokens pass; the configured HS256 key still works.
    assert!(
        eventually(10, || async {
            status_of(&h, &k1.bearer(&issuer, "u-rep1")).await == 200
        })
        .await,
        "k1 accepted after the first fetch:\n{}",
        h.log_text()
    );
    let hs = hs_token(&issuer, Some(permgate::demo::DEMO_KID));
    assert_eq!(status_of(&h, &hs).await, 200);
    // A token for the IdP's issuer signed by a key it never published: refused.
    assert_eq!(status_of(&h, &k2.bearer(&issuer, "u-rep1")).await, 401);
    let ready = client()
        .get(format!("http://127.0.0.1:{admin_port}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    // The IdP rotates to k2 (k1 withdrawn). The first k2 token is refused and asks for an
    // early fetch; within the rate limit k2 passes and k1 (cached until now) is refused.
    let k1_token = k1.bearer(&issuer, "u-rep1");
    assert_eq!(status_of(&h, &k1_token).await, 200); // cached
    *idp.jwks.lock().unwrap() = (200, jwks_of(&[&k2]));
    let k2_token = k2.bearer(&issuer, "u-rep1");
    assert!(
        eventually(10, || async { status_of(&h, &k2_token).await == 200 }).await,
        "k2 accepted after the rotation:\n{}",
        h.log_text()
    );
    assert_eq!(status_of(&h, &k1_token).await, 401, "the withdrawn key");

    // Unknown kids in a burst: fetches stay rate-limited (1 s here).
    let before = idp.jwks_hits.load(Ordering::SeqCst);
    for i in 0..30 {
        let stranger = Key::new(&format!("x{i}"));
        assert_eq!(
            status_of(&h, &stranger.bearer(&issuer, "u-rep1")).await,
            401
        );
    }
    let during = idp.jwks_hits.load(Ordering::SeqCst) - before;
    assert!(
        during <= 3,
        "{during} fetches for 30 unknown kids in a burst"
    );

    // The IdP goes down: an early fetch fails, the last good keys stay.
    *idp.jwks.lock().unwrap() = (503, String::new());
    let failed_before = idp.jwks_hits.load(Ordering::SeqCst);
    assert_eq!(status_of(&h, &k3.bearer(&issuer, "u-rep1")).await, 401);
    assert!(
        eventually(5, || async {
            idp.jwks_hits.load(Ordering::SeqCst) > failed_before
        })
        .await,
        "a fetch was tried"
    );
    let fresh_k2 = k2.bearer(&issuer, "u-csr");
    assert_eq!(
        status_of(&h, &fresh_k2).await,
        200,
        "k2 kept while the IdP is down"
    );
    let status: serde_json::Value = client()
        .get(format!("http://127.0.0.1:{admin_port}/status"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status["jwks"]["keys"],
        serde_json::json!(["k2"]),
        "{status}"
    );
    assert!(
        status["jwks"]["failures"].as_u64().unwrap() >= 1,
        "{status}"
    );
    // Back up with k3: followed.
    *idp.jwks.lock().unwrap() = (200, jwks_of(&[&k2, &k3]));
    let k3_token = k3.bearer(&issuer, "u-rep1");
    assert!(
        eventually(10, || async { status_of(&h, &k3_token).await == 200 }).await,
        "k3 accepted once the IdP is back"
    );
}

/// `jwks_url` must be https (http only to loopback); discovery needs an issuer; located errors.
#[test]
fn jwks_settings_are_checked() {
    for (edit, expect) in [
        (
            "issuer = \"https://crm.example.test\"\njwks_url = \"http://idp.example.com/jwks\"",
            "identity.jwt.jwks_url: 'http://idp.example.com/jwks': keys are fetched over https",
        ),
        (
            "oidc_discovery = true",
            "identity.jwt.oidc_discovery: needs identity.jwt.issuer",
        ),
        (
            "issuer = \"https://crm.example.test\"\njwks_url = \"https://idp.example.com/jwks\"\njwks_refresh_seconds = 1",
            "identity.jwt.jwks_refresh_seconds: must be between 10 and 86400",
        ),
    ] {
        let text = demo_config_text().replace("issuer = \"https://crm.example.test\"", edit);
        let out = check_config_text(&text);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{edit}: {err}");
        assert!(err.contains(expect), "{edit}: {err}");
    }
}

/// Review finding: the IdP replaces the key material under the same `kid` (a compromised key
/// replaced, or an IdP with a fixed kid). The new document is taken: the old key's tokens are
/// refused (its cached tokens too), the new key's pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_key_material_under_the_same_kid_is_taken() {
    let idp = idp().await;
    let issuer = format!("http://{}", idp.addr);
    let (old, new) = (Key::new("k1"), Key::new("k1"));
    *idp.jwks.lock().unwrap() = (200, jwks_of(&[&old]));
    let (admin, _) = admin_section();
    let text = demo_config_text().replace(
        "issuer = \"https://crm.example.test\"",
        &format!("issuer = \"{issuer}\"\noidc_discovery = true\njwks_min_refresh_seconds = 1"),
    ) + &admin;
    let h = Harness::with_config_text(&text, &[]).await;
    let old_token = old.bearer(&issuer, "u-rep1");
    assert!(eventually(10, || async { status_of(&h, &old_token).await == 200 }).await);
    *idp.jwks.lock().unwrap() = (200, jwks_of(&[&new]));
    // An unknown kid asks for an early fetch (the periodic one is 300 s away).
    let stranger = Key::new("zz").bearer(&issuer, "u-rep1");
    let new_token = new.bearer(&issuer, "u-rep1");
    assert!(
        eventually(10, || async {
            status_of(&h, &stranger).await;
            status_of(&h, &new_token).await == 200
        })
        .await,
        "the new key under the same kid is taken"
    );
    assert_eq!(
        status_of(&h, &old_token).await,
        401,
        "the cached old-key token"
    );
    assert_eq!(status_of(&h, &old.bearer(&issuer, "u-csr")).await, 401);
}

fn hs_token(issuer: &str, kid: Option<&str>) -> String {
    let claims = serde_json::json!({"sub": "u-rep1", "iss": issuer, "aud": "crm-api",
                                    "exp": unix_now() + 600});
    format!("Bearer {}", demo_key_token(&claims, kid))
}

/// Review finding: with one configured key, a token without `kid` (a CRM's own) uses it,
/// whatever keys were fetched; a fetched key is only ever picked by its `kid`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kidless_token_uses_the_one_configured_key_beside_fetched_keys() {
    let idp = idp().await;
    let issuer = format!("http://{}", idp.addr);
    let k1 = Key::new("k1");
    *idp.jwks.lock().unwrap() = (200, jwks_of(&[&k1]));
    let (admin, _) = admin_section();
    let text = demo_config_text().replace(
        "issuer = \"https://crm.example.test\"",
        &format!("issuer = \"{issuer}\"\noidc_discovery = true"),
    ) + &admin;
    let h = Harness::with_config_text(&text, &[]).await;
    assert!(
        eventually(10, || async {
            status_of(&h, &k1.bearer(&issuer, "u-rep1")).await == 200
        })
        .await
    );
    assert_eq!(status_of(&h, &hs_token(&issuer, None)).await, 200);
    // A fetched key's token without its kid is not matched to it.
    let mut kidless = k1.bearer(&issuer, "u-rep1");
    {
        let token = kidless.trim_start_matches("Bearer ").to_string();
        let parts: Vec<&str> = token.split('.').collect();
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"ES256","typ":"JWT"}"#);
        kidless = format!("Bearer {header}.{}.{}", parts[1], parts[2]);
    }
    assert_eq!(status_of(&h, &kidless).await, 401);
}

/// Review findings: a JWK whose type is not its algorithm's (a symmetric key labelled RS256) is
/// skipped; a discovery document must name the configured issuer; keys from an IdP need both
/// issuer and audience configured.
#[test]
fn mislabelled_keys_foreign_discovery_and_unscoped_idp_keys_are_refused() {
    let doc = br#"{"keys":[{"kty":"oct","kid":"h","alg":"RS256","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}"#;
    assert!(permgate::jwks::parse_jwks(doc).is_err());
    let discovery = br#"{"issuer":"https://other.example","jwks_uri":"https://other.example/k"}"#;
    assert!(permgate::jwks::discovered_jwks_uri(discovery, "https://idp.example").is_err());
    let downgrade = br#"{"issuer":"https://idp.example","jwks_uri":"http://localhost/k"}"#;
    assert!(permgate::jwks::discovered_jwks_uri(downgrade, "https://idp.example").is_err());
    let fine = br#"{"issuer":"https://idp.example","jwks_uri":"https://idp.example/k"}"#;
    assert!(permgate::jwks::discovered_jwks_uri(fine, "https://idp.example").is_ok());

    let text = demo_config_text()
        .replace("audience = \"crm-api\"\n", "")
        .replace(
            "issuer = \"https://crm.example.test\"",
            "issuer = \"https://crm.example.test\"\njwks_url = \"https://idp.example.com/jwks\"",
        );
    let out = check_config_text(&text);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("need both issuer and audience"), "{err}");
}
