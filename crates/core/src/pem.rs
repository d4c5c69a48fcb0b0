//! PEM files for TLS: certificate chains, CA bundles and private keys, parsed strictly.
//!
//! Used by the config loader (so `check-config` and a reload refuse a bad file, naming it) and by
//! the proxy glue, which turns the parsed DER into its TLS library's types.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Every certificate in a PEM file; an unreadable file, a malformed block or no certificate at
/// all is an error.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read '{}': {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "'{}': not a valid PEM certificate file: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!("'{}' holds no certificate", path.display()));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read '{}': {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&text)
        .map_err(|e| format!("'{}': no usable private key: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_and_keys_parse_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["crm.internal".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k, bad) = (
            dir.path().join("c.pem"),
            dir.path().join("k.pem"),
            dir.path().join("bad.pem"),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        std::fs::write(&bad, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
        assert_eq!(certificates(&c).unwrap().len(), 1);
        assert!(private_key(&k).is_ok());
        assert!(certificates(&k)
            .unwrap_err()
            .contains("holds no certificate"));
        assert!(private_key(&c).is_err());
        assert!(certificates(&bad).is_err());
        assert!(certificates(&dir.path().join("missing.pem"))
            .unwrap_err()
            .contains("cannot read"));
    }
}
