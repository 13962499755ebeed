//! Certificates for the TLS tests, made in-process with rcgen (ECDSA P-256): a CA and the leaf
//! certificates it signs, as PEM text or as `<name>.crt` / `<name>.key` files.
//!
//! Every key is new, and so is every serial number (rcgen derives it from the public key):
//! clients that cache by issuer and serial never mistake one certificate for another.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A self-signed certificate authority.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// The subject of a leaf certificate.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// `CN=<name>`
    CommonName(&'a str),
    /// `O=<name>` and no common name (etcd refuses client certificates with a CN once
    /// authentication is on).
    Organization(&'a str),
}

/// What a leaf certificate may be used for (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    /// etcd's JSON gateway presents the server certificate as a client to etcd itself.
    ServerAndClient,
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    /// A CA whose subject is `CN=regent test <name>`.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("regent test {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("generate a CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Ca { cert, key }
    }

    /// The CA's certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// Write the certificate and key as `<dir>/<name>.crt` and `<dir>/<name>.key`; returns the
    /// certificate's path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        write_pair(dir, name, &self.cert_pem(), &self.key.serialize_pem()).0
    }

    /// A leaf certificate signed by this CA, valid for `names` (IP addresses or DNS names, as
    /// subject alternative names).
    pub fn issue(&self, subject: Subject<'_>, names: &[&str], usage: Usage) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("subject alternative names");
        params.distinguished_name = DistinguishedName::new();
        match subject {
            Subject::CommonName(cn) => params.distinguished_name.push(DnType::CommonName, cn),
            Subject::Organization(o) => params.distinguished_name.push(DnType::OrganizationName, o),
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        let key = KeyPair::generate().expect("generate a key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// [`Ca::issue`] written as `<dir>/<name>.crt` and `<dir>/<name>.key`; returns both paths.
    pub fn issue_to(
        &self,
        dir: &Path,
        name: &str,
        subject: Subject<'_>,
        names: &[&str],
        usage: Usage,
    ) -> (PathBuf, PathBuf) {
        self.issue(subject, names, usage).write(dir, name)
    }
}

impl Leaf {
    /// Write `<dir>/<name>.crt` and `<dir>/<name>.key`; returns both paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        write_pair(dir, name, &self.cert_pem, &self.key_pem)
    }

    /// Certificate and key in one PEM text.
    pub fn combined_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }
}

/// A PEM private key in the envelope of an encrypted PKCS#8 key (`ENCRYPTED PRIVATE KEY`), as
/// `openssl pkey -aes256` writes it. The body is the plain key's: loaders that refuse encrypted
/// keys decide on the envelope, before any decryption.
pub fn encrypted_key_envelope(key_pem: &str) -> String {
    key_pem.replace("PRIVATE KEY-----", "ENCRYPTED PRIVATE KEY-----")
}

/// A self-signed CA written as `<dir>/<name>.crt` and `<dir>/<name>.key`; returns the
/// certificate's path. For a CA nothing should trust.
pub fn write_ca(dir: &Path, name: &str) -> PathBuf {
    Ca::new(name).write(dir, name)
}

fn write_pair(dir: &Path, name: &str, cert_pem: &str, key_pem: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    for (path, text) in [(&cert, cert_pem), (&key, key_pem)] {
        std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
    (cert, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_certificates_are_pem_and_distinct() {
        let ca = Ca::new("ca");
        let a = ca.issue(
            Subject::CommonName("127.0.0.1"),
            &["127.0.0.1", "localhost"],
            Usage::Server,
        );
        let b = ca.issue(Subject::Organization("client"), &[], Usage::Client);
        assert!(a.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(a.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_ne!(a.cert_pem, b.cert_pem);
        let encrypted = encrypted_key_envelope(&a.key_pem);
        assert!(encrypted.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        assert!(encrypted
            .trim_end()
            .ends_with("-----END ENCRYPTED PRIVATE KEY-----"));
    }
}
