//! Certificates, private keys and certificate revocation lists read from PEM files (or PEM text
//! already in memory), for every TLS client and server of Regent: one parser, and errors that
//! name the file and say what is wrong with it. Callers prefix the configuration key.
//!
//! Text outside PEM blocks (OpenSSL's "Bag Attributes", comments) and blocks of other kinds
//! (`EC PARAMETERS` next to a key) are skipped.

use std::path::Path;

use base64::Engine;
use rustls_pki_types::pem::{self, PemObject, SectionKind};
pub use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// What went wrong with a PEM source; `name` is the file's path (or the name a caller gave text).
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read {name}: {error}")]
    Read { name: String, error: std::io::Error },
    #[error("{name}: malformed PEM: {detail}")]
    Malformed { name: String, detail: String },
    #[error("{name}: no PEM certificate found")]
    NoCertificate { name: String },
    #[error("{name}: no PEM private key")]
    NoPrivateKey { name: String },
    #[error("{name}: contains more than one private key")]
    SeveralPrivateKeys { name: String },
    /// rustls cannot decrypt keys, and no small maintained crate does it for every format
    /// OpenSSL writes: the key is refused by its envelope instead of with an obscure parse error.
    #[error("{name}: encrypted private keys are not supported")]
    EncryptedKey { name: String },
}

/// The certificates of a PEM file, in file order; at least one is required.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    certificates_from_text(&path.display().to_string(), &read(path)?)
}

/// [`certificates`] from PEM text; `name` stands for its origin in errors.
pub fn certificates_from_text(
    name: &str,
    text: &[u8],
) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs: Vec<CertificateDer<'static>> = sections(name, text)?
        .into_iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der))
        .collect();
    if certs.is_empty() {
        return Err(PemError::NoCertificate { name: name.into() });
    }
    Ok(certs)
}

/// The one private key of a PEM file: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) or
/// SEC1 (`EC PRIVATE KEY`). Encrypted keys are refused. The file may hold certificates too.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    private_key_from_text(&path.display().to_string(), &read(path)?)
}

/// [`private_key`] from PEM text; `name` stands for its origin in errors.
pub fn private_key_from_text(name: &str, text: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    if is_encrypted(text) {
        return Err(PemError::EncryptedKey { name: name.into() });
    }
    let mut keys = sections(name, text)?
        .into_iter()
        .filter_map(|(kind, der)| match kind {
            SectionKind::PrivateKey => Some(PrivateKeyDer::Pkcs8(der.into())),
            SectionKind::RsaPrivateKey => Some(PrivateKeyDer::Pkcs1(der.into())),
            SectionKind::EcPrivateKey => Some(PrivateKeyDer::Sec1(der.into())),
            _ => None,
        });
    let key = keys
        .next()
        .ok_or_else(|| PemError::NoPrivateKey { name: name.into() })?;
    if keys.next().is_some() {
        return Err(PemError::SeveralPrivateKeys { name: name.into() });
    }
    Ok(key)
}

/// The certificate revocation lists (`X509 CRL`) of a PEM file; none is not an error.
pub fn revocation_lists(
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, PemError> {
    revocation_lists_from_text(&path.display().to_string(), &read(path)?)
}

/// [`revocation_lists`] from PEM text; `name` stands for its origin in errors.
pub fn revocation_lists_from_text(
    name: &str,
    text: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, PemError> {
    Ok(sections(name, text)?
        .into_iter()
        .filter(|(kind, _)| *kind == SectionKind::Crl)
        .map(|(_, der)| CertificateRevocationListDer::from(der))
        .collect())
}

/// A certificate as PEM text, for APIs that only take PEM.
pub fn certificate_pem(cert: &CertificateDer<'_>) -> String {
    encode("CERTIFICATE", cert.as_ref())
}

/// A private key as PEM text, labelled by its format, for APIs that only take PEM.
pub fn private_key_pem(key: &PrivateKeyDer<'_>) -> String {
    let label = match key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    encode(label, key.secret_der())
}

fn encode(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    // 64 characters a line, as RFC 7468 asks; base64 output is ASCII.
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|error| PemError::Read {
        name: path.display().to_string(),
        error,
    })
}

/// Every PEM block of a kind rustls knows, in order; other blocks are skipped.
fn sections(name: &str, text: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, PemError> {
    <(SectionKind, Vec<u8>)>::pem_slice_iter(text)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| PemError::Malformed {
            name: name.into(),
            detail: e.to_string(),
        })
}

/// A PKCS#8 `ENCRYPTED PRIVATE KEY` block, or a legacy OpenSSL key with a `Proc-Type` header.
fn is_encrypted(text: &[u8]) -> bool {
    let text = String::from_utf8_lossy(text);
    text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || text.contains("Proc-Type: 4,ENCRYPTED")
}

#[cfg(test)]
mod tests;
