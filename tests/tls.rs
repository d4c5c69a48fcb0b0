//! TLS end to end with certificates generated here: HTTPS downstream (HTTP/1.1 and HTTP/2 by
//! ALPN), certificate reload when the files change, and TLS to the CRM with a CA bundle, SNI and
//! a client certificate (both re-read when their files change).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A server certificate for localhost / 127.0.0.1: (cert PEM, key PEM).
    fn server(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A client certificate (clientAuth): (cert PEM, key PEM).
    fn client(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// A gateway on the demo config serving HTTPS with a certificate from `ca`, plus `extra` lines
/// in `[listen.tls]`; returns the harness and the URL of a customer read.
async fn https_gateway(dir: &Path, ca: &Ca, extra: &str) -> (Harness, String) {
    let (cert, key) = ca.server();
    write(dir, "gw.pem", &cert);
    write(dir, "gw.key", &key);
    let text = demo_config_text().replacen(
        "[upstream]",
        &format!(
            "[listen.tls]\ncert_file = \"gw.pem\"\nkey_file = \"gw.key\"\n{extra}\n[upstream]"
        ),
        1,
    );
    write(dir, "permgate.toml", &text);
    write(dir, "snapshot.json", permgate::demo::DEMO_SNAPSHOT);
    let h = Harness::start_with(&dir.join("permgate.toml")).await;
    let url = format!("https://localhost:{}/api/v1/customers/1", h.addr.port());
    (h, url)
}

fn https_client(ca: &Ca, h2: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap());
    if !h2 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_downstream_with_certificate_reload() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = Ca::new("permgate test CA 1");
    let (h, url) = https_gateway(dir.path(), &ca1, "").await;

    for h2 in [false, true] {
        let r = https_client(&ca1, h2)
            .get(&url)
            .header("authorization", bearer("u-rep1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.version(),
            if h2 {
                reqwest::Version::HTTP_2
            } else {
                reqwest::Version::HTTP_11
            }
        );
        let r = https_client(&ca1, h2)
            .delete(format!(
                "https://localhost:{}/api/v1/campaigns/1",
                h.addr.port()
            ))
            .header("authorization", bearer("u-rep1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }
    // Plain HTTP on the TLS port is refused.
    let plain = client().get(h.url("/api/v1/customers/1")).send().await;
    assert!(plain.map_or(true, |r| r.status() != 200));

    // Rotate to a certificate from another CA: after the reload, only CA 2 is trusted.
    let ca2 = Ca::new("permgate test CA 2");
    let (cert2, key2) = ca2.server();
    write(dir.path(), "gw.key.new", &key2);
    write(dir.path(), "gw.pem.new", &cert2);
    std::fs::rename(dir.path().join("gw.key.new"), dir.path().join("gw.key")).unwrap();
    std::fs::rename(dir.path().join("gw.pem.new"), dir.path().join("gw.pem")).unwrap();
    let reloaded = eventually(15, || {
        let c = https_client(&ca2, false);
        let url = url.clone();
        async move {
            c.get(url)
                .header("authorization", bearer("u-rep1"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
    assert!(reloaded, "the new certificate is served");
    assert!(https_client(&ca1, false).get(&url).send().await.is_err());
}

/// A TLS client offering only ALPN `http/1.0` (old clients, some monitors) is accepted, as
/// nginx accepts it, and served HTTP/1.0: the decision is taken and the call forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_offering_only_http_1_0_by_alpn_is_served() {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

    if engine() == "pingora" {
        return; // the hyper engine's acceptor
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("permgate test CA");
    let (h, _) = https_gateway(dir.path(), &ca, "").await;
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.0".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    for (path, user, want) in [
        ("/api/v1/customers/1", "u-rep1", "200"),
        ("/api/v1/campaigns/1", "u-rep1", "403"),
    ] {
        h.clear();
        let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("the handshake succeeds with ALPN http/1.0 only");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.0"[..]));
        let method = if want == "403" { "DELETE" } else { "GET" };
        tls.write_all(
            format!(
                "{method} {path} HTTP/1.0\r\nHost: localhost\r\nAuthorization: {}\r\n\r\n",
                bearer(user)
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tls.read_to_end(&mut answer),
        )
        .await;
        let answer = String::from_utf8_lossy(&answer);
        let status_line = answer.lines().next().unwrap_or("");
        assert!(
            status_line.starts_with("HTTP/1.") && status_line.contains(&format!(" {want} ")),
            "{answer}"
        );
        assert_eq!(h.received().len(), usize::from(want == "200"), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_crm_with_a_ca_bundle_and_sni() {
    // front (plain) → back (TLS, public pass-through) → sample CRM.
    let ca = Ca::new("permgate upstream CA");
    let (cert, key) = ca.server();
    let back_dir = tempfile::tempdir().unwrap();
    write(back_dir.path(), "b.pem", &cert);
    write(back_dir.path(), "b.key", &key);
    let back_text = demo_config_text().replacen(
        "[upstream]",
        "[listen.tls]\ncert_file = \"b.pem\"\nkey_file = \"b.key\"\n\n[upstream]",
        1,
    );
    write(back_dir.path(), "permgate.toml", &back_text);
    write(
        back_dir.path(),
        "snapshot.json",
        permgate::demo::DEMO_SNAPSHOT,
    );
    let back = Harness::start_with(&back_dir.path().join("permgate.toml")).await;

    let front_dir = tempfile::tempdir().unwrap();
    write(front_dir.path(), "ca.pem", &ca.pem());
    let front_text = demo_config_text().replacen(
        "pool_size = 1024",
        "pool_size = 1024\n\n[upstream.tls]\nsni = \"localhost\"\nca_file = \"ca.pem\"",
        1,
    );
    assert!(front_text.contains("[upstream.tls]"));
    write(front_dir.path(), "permgate.toml", &front_text);
    write(
        front_dir.path(),
        "snapshot.json",
        permgate::demo::DEMO_SNAPSHOT,
    );
    let front =
        Harness::start_custom(&front_dir.path().join("permgate.toml"), Some(back.addr)).await;

    let r = client()
        .get(front.url("/api/v1/customers/1"))
        .header("authorization", bearer("u-rep1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", front.log_text());
    let got = back.received();
    assert_eq!(
        got.len(),
        1,
        "the call crossed TLS to the back gateway and reached its CRM"
    );
    assert_eq!(recorded_header(&got[0], "x-permgate-user"), vec!["u-rep1"]);

    // A front that does not trust the back's CA refuses the connection: 502, nothing forwarded.
    back.clear();
    let other = Ca::new("someone else");
    let bad_dir = tempfile::tempdir().unwrap();
    write(bad_dir.path(), "ca.pem", &other.pem());
    write(bad_dir.path(), "permgate.toml", &front_text);
    write(
        bad_dir.path(),
        "snapshot.json",
        permgate::demo::DEMO_SNAPSHOT,
    );
    let bad = Harness::start_custom(&bad_dir.path().join("permgate.toml"), Some(back.addr)).await;
    let r = client()
        .get(bad.url("/api/v1/customers/1"))
        .header("authorization", bearer("u-rep1"))
        .send()
        .await
        .unwrap();
    assert!(r.status() == 502 || r.status() == 504, "{}", r.status());
    assert!(back.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("permgate mTLS CA");
    write(dir.path(), "clients.pem", &ca.pem());
    let (h, url) = https_gateway(dir.path(), &ca, "client_ca_file = \"clients.pem\"\n").await;

    // No client certificate: the handshake fails, nothing reaches the CRM.
    assert!(https_client(&ca, false).get(&url).send().await.is_err());
    assert!(h.received().is_empty());

    // A certificate from the trusted CA: served.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["crm-frontend".to_string()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = params.signed_by(&key, &ca.issuer).unwrap();
    let identity = reqwest::Identity::from_pem(
        format!("{}{}", client_cert.pem(), key.serialize_pem()).as_bytes(),
    )
    .unwrap();
    let c = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .identity(identity)
        .build()
        .unwrap();
    let r = c
        .get(&url)
        .header("authorization", bearer("u-rep1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A certificate from another CA: refused.
    let other = Ca::new("not trusted");
    let key = KeyPair::generate().unwrap();
    let bad = params.signed_by(&key, &other.issuer).unwrap();
    let identity =
        reqwest::Identity::from_pem(format!("{}{}", bad.pem(), key.serialize_pem()).as_bytes())
            .unwrap();
    let c = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .identity(identity)
        .build()
        .unwrap();
    assert!(c.get(&url).send().await.is_err());
    assert_eq!(h.received().len(), 1);
}

/// front (plain) → back (TLS that demands a client certificate) → sample CRM. The front presents
/// `upstream.tls.cert_file`/`key_file`; without them the back refuses the handshake. The CA
/// bundle is re-read when its file changes: a front that starts with the wrong one recovers
/// without a restart once the right one is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_toward_the_crm_and_ca_bundle_reload() {
    let server_ca = Ca::new("back server CA");
    let client_ca = Ca::new("back client CA");
    let back_dir = tempfile::tempdir().unwrap();
    write(back_dir.path(), "clients.pem", &client_ca.pem());
    let (back, _) = https_gateway(
        back_dir.path(),
        &server_ca,
        "client_ca_file = \"clients.pem\"\n",
    )
    .await;

    let front = |ca: &str, client: bool| {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ca.pem", ca);
        let (cert, key) = client_ca.client("permgate-front");
        write(dir.path(), "client.pem", &cert);
        write(dir.path(), "client.key", &key);
        let files = if client {
            "\ncert_file = \"client.pem\"\nkey_file = \"client.key\""
        } else {
            ""
        };
        let text = demo_config_text().replacen(
            "pool_size = 1024",
            &format!(
                "pool_size = 1024\n\n[upstream.tls]\nsni = \"localhost\"\nca_file = \"ca.pem\"{files}"
            ),
            1,
        );
        assert!(text.contains("[upstream.tls]"));
        write(dir.path(), "permgate.toml", &text);
        write(dir.path(), "snapshot.json", permgate::demo::DEMO_SNAPSHOT);
        dir
    };
    let get = |h: &Harness| {
        client()
            .get(h.url("/api/v1/customers/1"))
            .header("authorization", bearer("u-rep1"))
            .send()
    };

    // With the client certificate: through to the back's CRM.
    let dir = front(&server_ca.pem(), true);
    let h = Harness::start_custom(&dir.path().join("permgate.toml"), Some(back.addr)).await;
    let r = get(&h).await.unwrap();
    assert_eq!(r.status(), 200, "{}", h.log_text());
    assert_eq!(back.received().len(), 1);
    drop(h);

    // Without it: the back refuses the handshake; 502, nothing forwarded.
    back.clear();
    let dir = front(&server_ca.pem(), false);
    let h = Harness::start_custom(&dir.path().join("permgate.toml"), Some(back.addr)).await;
    let r = get(&h).await.unwrap();
    assert!(r.status() == 502 || r.status() == 504, "{}", r.status());
    assert!(back.received().is_empty());
    drop(h);

    // The wrong CA bundle at start: 502; the right one written in place: served, no restart.
    let dir = front(&Ca::new("someone else").pem(), true);
    let h = Harness::start_custom(&dir.path().join("permgate.toml"), Some(back.addr)).await;
    let r = get(&h).await.unwrap();
    assert!(r.status() == 502 || r.status() == 504, "{}", r.status());
    assert!(back.received().is_empty());
    // A garbage bundle is refused and the old one stays (still failing, still not forwarding).
    write(
        dir.path(),
        "ca.pem",
        "-----BEGIN CERTIFICATE-----\ngarbage\n",
    );
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert!(get(&h).await.unwrap().status().is_server_error());
    let tmp = dir.path().join("ca.pem.tmp");
    std::fs::write(&tmp, server_ca.pem()).unwrap();
    std::fs::rename(&tmp, dir.path().join("ca.pem")).unwrap();
    assert!(
        eventually(10, || async { get(&h).await.unwrap().status() == 200 }).await,
        "{}",
        h.log_text()
    );
    assert_eq!(back.received().len(), 1);
    assert!(h.log_text().contains("upstream TLS change refused"));
}

/// An inspected call (a bulk reassign, trimmed) is forwarded by the gateway's own client: it
/// crosses TLS to the CRM with the same CA bundle and client certificate as any other call, and
/// the CRM receives exactly the allowed items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inspected_call_crosses_mutual_tls_to_the_crm() {
    let owner = |n: u32| {
        [
            "u-admin", "u-sm", "u-rep1", "u-rep2", "u-csr", "u-mm", "u-da", "u-member",
        ][(n as usize - 1) % 8]
    };
    let mut snap: serde_json::Value = serde_json::from_str(permgate::demo::DEMO_SNAPSHOT).unwrap();
    snap["roles"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"id": "own_reassigner", "permissions": ["lead.reassign@own"]}));
    for u in snap["users"].as_array_mut().unwrap() {
        if u["id"] == "u-rep1" {
            u["roles"] = serde_json::json!(["own_reassigner"]);
        }
    }
    snap["records"] = serde_json::json!({"owners": (1..=16)
        .map(|n| serde_json::json!({"type": "lead", "id": n.to_string(), "owner": owner(n)}))
        .collect::<Vec<_>>()});
    let snap = snap.to_string();

    let server_ca = Ca::new("back server CA");
    let client_ca = Ca::new("back client CA");
    let back_dir = tempfile::tempdir().unwrap();
    write(back_dir.path(), "clients.pem", &client_ca.pem());
    let (cert, key) = server_ca.server();
    write(back_dir.path(), "gw.pem", &cert);
    write(back_dir.path(), "gw.key", &key);
    let back_text = demo_config_text().replacen(
        "[upstream]",
        "[listen.tls]\ncert_file = \"gw.pem\"\nkey_file = \"gw.key\"\nclient_ca_file = \"clients.pem\"\n\n[upstream]",
        1,
    ) + "\n[[record_type]]\nname = \"lead\"\nid = \"integer\"\n";
    write(back_dir.path(), "permgate.toml", &back_text);
    write(back_dir.path(), "snapshot.json", &snap);
    let back = Harness::start_with(&back_dir.path().join("permgate.toml")).await;

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ca.pem", &server_ca.pem());
    let (cert, key) = client_ca.client("permgate-front");
    write(dir.path(), "client.pem", &cert);
    write(dir.path(), "client.key", &key);
    let route = "path = \"/api/v1/leads/bulk-reassign\"\npermission = \"lead.reassign\"";
    let text = demo_config_text()
        .replacen(
            route,
            &format!("{route}\nbulk = {{ type = \"lead\", items = \"/ids\", keys = [\"ids\", \"owner_id\"] }}\nnew_owner = {{ at = \"/owner_id\" }}"),
            1,
        )
        .replacen(
            "pool_size = 1024",
            "pool_size = 1024\n\n[upstream.tls]\nsni = \"localhost\"\nca_file = \"ca.pem\"\ncert_file = \"client.pem\"\nkey_file = \"client.key\"",
            1,
        )
        + "\n[[record_type]]\nname = \"lead\"\nid = \"integer\"\n";
    assert!(text.contains("bulk = {") && text.contains("[upstream.tls]"));
    write(dir.path(), "permgate.toml", &text);
    write(dir.path(), "snapshot.json", &snap);
    let front = Harness::start_custom(&dir.path().join("permgate.toml"), Some(back.addr)).await;

    // u-rep1 owns leads 3 and 11 of these.
    let r = client()
        .post(front.url("/api/v1/leads/bulk-reassign"))
        .header("authorization", bearer("u-rep1"))
        .header("content-type", "application/json")
        .body(r#"{"ids": [1, 3, 2, 11, 4], "owner_id": "u-rep1"}"#)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let removed = r.headers().get("x-permgate-removed-count").cloned();
    let answer = r.text().await.unwrap();
    assert_eq!(
        status,
        200,
        "{answer}\n{}\n{}",
        front.log_text(),
        back.log_text()
    );
    assert_eq!(removed.unwrap(), "3");
    let got = back.received();
    assert_eq!(got.len(), 1, "{}", back.log_text());
    let forwarded: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(forwarded["ids"], serde_json::json!([3, 11]));
}

/// Session resumption for many clients: 300 clients connect once each, then each reconnects
/// offering the ticket it got. Every reconnection must resume. (With rustls's default stateful
/// tickets, a 256-entry cache holding 2 tickets per connection, the first ~170 clients' tickets
/// were evicted before their turn and those clients fell back to full handshakes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_resume_sessions_for_more_clients_than_a_session_cache_holds() {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{self, ClientConfig, HandshakeKind, RootCertStore};

    if engine() == "pingora" {
        return; // the hyper engine's acceptor
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("permgate test CA");
    let (h, _) = https_gateway(dir.path(), &ca, "").await;
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let base =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    // Each client its own session cache, as separate client machines would have.
    let clients: Vec<tokio_rustls::TlsConnector> = (0..300)
        .map(|_| {
            let mut c = base.clone();
            c.resumption = rustls::client::Resumption::in_memory_sessions(4);
            tokio_rustls::TlsConnector::from(Arc::new(c))
        })
        .collect();
    // One call per connection; reading the answer to the end also reads the tickets.
    let addr = h.addr;
    let call = |connector: tokio_rustls::TlsConnector| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let kind = tls.get_ref().1.handshake_kind();
        tls.write_all(
            b"GET /api/v1/customers/1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tls.read_to_end(&mut answer),
        )
        .await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
        kind
    };
    for c in &clients {
        assert_eq!(call(c.clone()).await, Some(HandshakeKind::Full));
    }
    let mut resumed = 0;
    for c in &clients {
        resumed += usize::from(call(c.clone()).await == Some(HandshakeKind::Resumed));
    }
    assert_eq!(resumed, clients.len(), "reconnections that resumed");
}

/// Write raw HTTP/1.1 bytes over TLS (no ALPN: HTTP/1.1, hyper's own server, never the lane)
/// and read until the gateway closes.
async fn raw_over_tls(h: &Harness, ca: &Ca, request: &[u8]) -> String {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tls.read_to_end(&mut out),
    )
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// hyper's HTTP/1.1 server behind TLS checks what the lane checks on plain HTTP (issue 14):
/// a `#fragment` (which hyper drops silently), a missing or bad `Host`, a body on GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_over_tls_refuses_fragments_bad_hosts_and_bodies_on_get() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("permgate test CA");
    let (h, _) = https_gateway(dir.path(), &ca, "").await;
    let admin = bearer("u-admin");
    let ok = format!(
        "GET /api/v1/customers/2 HTTP/1.1\r\nHost: localhost\r\nAuthorization: {admin}\r\nConnection: close\r\n\r\n"
    );
    for (request, code) in [
        (
            format!("GET /api/v1/customers/1#x HTTP/1.1\r\nHost: localhost\r\nAuthorization: {admin}\r\n\r\n{ok}"),
            "invalid_character",
        ),
        (
            format!("GET /api/v1/customers/1 HTTP/1.1\r\nAuthorization: {admin}\r\n\r\n{ok}"),
            "missing_host",
        ),
        (
            format!("GET /api/v1/customers/1 HTTP/1.1\r\nHost: u_admin@localhost\r\nAuthorization: {admin}\r\n\r\n{ok}"),
            "invalid_host",
        ),
        (
            format!("GET /api/v1/customers/1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: {admin}\r\nContent-Length: 5\r\n\r\nhello{ok}"),
            "body_not_allowed",
        ),
    ] {
        h.clear();
        let answer = raw_over_tls(&h, &ca, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{code}: {answer}");
        assert!(answer.contains(&format!("\"error\":\"{code}\"")), "{answer}");
        let reached: Vec<String> = h.received().into_iter().map(|r| r.target).collect();
        assert!(
            reached.iter().all(|t| t == "/api/v1/customers/2"),
            "{code}: the CRM received {reached:?}"
        );
    }
}
