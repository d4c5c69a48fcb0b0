//! Certificate files both data planes serve from and reload: the listener's certificate (a
//! rustls resolver swapped when the files change) and the trust store for client certificates,
//! plus the file poller the upstream TLS material uses too. Pingora-free (Pingora re-exports
//! the same rustls).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::RootCertStore;
use tracing::{info, warn};

use crate::config::ListenTls;

/// How often certificate files are checked for changes.
pub const POLL: Duration = Duration::from_secs(2);

/// The process's crypto provider (ring unless one is installed).
pub fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()))
}

/// Poll on a thread of its own: every [`POLL`], when `stamp()` differs from the last one,
/// `reload()` (which logs its own outcome).
pub fn watch<S: PartialEq + Send + 'static>(
    thread: &str,
    stamp: impl Fn() -> S + Send + 'static,
    reload: impl Fn() + Send + 'static,
) -> Result<(), String> {
    std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || {
            let mut last = stamp();
            loop {
                std::thread::sleep(POLL);
                let now = stamp();
                if now != last {
                    reload();
                    last = now;
                }
            }
        })
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The listener's certificate, swapped in place when its files change.
#[derive(Debug)]
pub struct Reloading {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn load(files: &ListenTls) -> Result<CertifiedKey, String> {
    let chain = crate::pem::certificates(&files.cert_file)?;
    let key = crate::pem::private_key(&files.key_file)?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        format!(
            "{} / {}: {e}",
            files.cert_file.display(),
            files.key_file.display()
        )
    })
}

fn stamp(files: &ListenTls) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(&files.cert_file)?, m(&files.key_file)?))
}

/// The resolver for `listen.tls`, and a thread that swaps in new certificates when the files
/// change (a bad pair is logged and the old one stays).
pub fn listener_resolver(files: &ListenTls) -> Result<Arc<Reloading>, String> {
    let resolver = Arc::new(Reloading {
        current: ArcSwap::from_pointee(load(files)?),
    });
    let (watched, shared) = (files.clone(), resolver.clone());
    let files = files.clone();
    watch(
        "permgate-tls-reload",
        move || stamp(&watched),
        move || {
            if stamp(&files).is_none() {
                return; // a file is missing mid-rename: wait for the next poll
            }
            match load(&files) {
                Ok(k) => {
                    shared.current.store(Arc::new(k));
                    info!(
                        "TLS certificate reloaded from {}",
                        files.cert_file.display()
                    );
                }
                Err(e) => warn!("TLS certificate change refused, the old one stays: {e}"),
            }
        },
    )?;
    Ok(resolver)
}

/// mTLS: only clients with a certificate from the CAs in `ca` complete the handshake.
pub fn client_verifier(ca: &Path) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for c in crate::pem::certificates(ca)? {
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| format!("{}: {e}", ca.display()))
}

/// What the upstream TLS material is read from and the files' modification times: it changes
/// when a file changes, or when a config reload names other files.
pub fn upstream_stamp(tls: Option<&crate::config::UpstreamTls>) -> impl PartialEq + Send {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let ca = tls.and_then(|t| t.ca_file.clone());
    let client = tls.and_then(|t| t.client.clone());
    let mut times = vec![ca.as_deref().and_then(m)];
    if let Some((c, k)) = &client {
        times.push(m(c));
        times.push(m(k));
    }
    (times, ca, client)
}
