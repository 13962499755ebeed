use std::path::PathBuf;

use test_pki::{encrypted_key_envelope, Ca, Subject, Usage};

use super::*;

/// A directory of its own per test, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("pemfiles-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn leaf() -> test_pki::Leaf {
    Ca::new("pemfiles").issue(
        Subject::CommonName("localhost"),
        &["localhost"],
        Usage::Server,
    )
}

#[test]
fn certificates_from_a_file() {
    let dir = TempDir::new("cert");
    let leaf = leaf();
    let path = dir.write("c.crt", &leaf.cert_pem);
    let certs = certificates(&path).unwrap();
    assert_eq!(certs.len(), 1);
    // The DER survives a round trip through PEM text.
    assert_eq!(
        certificates_from_text("again", certificate_pem(&certs[0]).as_bytes()).unwrap(),
        certs
    );
}

#[test]
fn a_bundle_of_several_certificates_keeps_their_order() {
    let dir = TempDir::new("bundle");
    let (a, b) = (Ca::new("a"), Ca::new("b"));
    let text = format!(
        "Bag Attributes\n{}\ncomment\n{}",
        a.cert_pem(),
        b.cert_pem()
    );
    let certs = certificates(&dir.write("bundle.crt", &text)).unwrap();
    assert_eq!(certs.len(), 2);
    assert_eq!(
        certs[0],
        certificates_from_text("a", a.cert_pem().as_bytes()).unwrap()[0]
    );
    assert_eq!(
        certs[1],
        certificates_from_text("b", b.cert_pem().as_bytes()).unwrap()[0]
    );
}

#[test]
fn a_file_without_certificate_is_refused_by_name() {
    let dir = TempDir::new("nocert");
    let path = dir.write("key-only.pem", &leaf().key_pem);
    let err = certificates(&path).unwrap_err();
    assert!(matches!(err, PemError::NoCertificate { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("{}: no PEM certificate found", path.display())
    );

    let missing = dir.0.join("missing.pem");
    let err = certificates(&missing).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("cannot read {}: ", missing.display())),
        "{err}"
    );
}

#[test]
fn each_key_format_is_read() {
    let dir = TempDir::new("keys");
    let leaf = leaf();
    // A certificate next to the key, as in a combined file, is skipped.
    let path = dir.write("combined.pem", &leaf.combined_pem());
    let key = private_key(&path).unwrap();
    assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));
    assert_eq!(
        private_key_from_text("again", private_key_pem(&key).as_bytes())
            .unwrap()
            .secret_der(),
        key.secret_der()
    );

    // The label decides the format; the DER inside is the caller's TLS library's to check.
    let pkcs1 = leaf
        .key_pem
        .replace("PRIVATE KEY-----", "RSA PRIVATE KEY-----");
    let key = private_key(&dir.write("rsa.key", &pkcs1)).unwrap();
    assert!(matches!(key, PrivateKeyDer::Pkcs1(_)));
    assert!(private_key_pem(&key).starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));

    let sec1 = format!(
        "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
        leaf.key_pem
            .replace("PRIVATE KEY-----", "EC PRIVATE KEY-----")
    );
    let key = private_key(&dir.write("ec.key", &sec1)).unwrap();
    assert!(matches!(key, PrivateKeyDer::Sec1(_)));
    assert!(private_key_pem(&key).starts_with("-----BEGIN EC PRIVATE KEY-----\n"));

    let err = private_key(&dir.write("c.crt", &leaf.cert_pem)).unwrap_err();
    assert!(matches!(err, PemError::NoPrivateKey { .. }), "{err:?}");
    assert!(
        err.to_string().contains("c.crt: no PEM private key"),
        "{err}"
    );

    let two = format!("{}{}", leaf.key_pem, leaf.key_pem);
    let err = private_key_from_text("two.key", two.as_bytes()).unwrap_err();
    assert!(
        matches!(err, PemError::SeveralPrivateKeys { .. }),
        "{err:?}"
    );
}

#[test]
fn encrypted_keys_are_refused() {
    let dir = TempDir::new("encrypted");
    let key_pem = leaf().key_pem;
    let path = dir.write("enc.key", &encrypted_key_envelope(&key_pem));
    let err = private_key(&path).unwrap_err();
    assert!(matches!(err, PemError::EncryptedKey { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: encrypted private keys are not supported",
            path.display()
        )
    );

    let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                  DEK-Info: AES-256-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
    assert!(matches!(
        private_key_from_text("legacy.key", legacy.as_bytes()),
        Err(PemError::EncryptedKey { .. })
    ));
}

#[test]
fn garbage_text_is_refused() {
    assert!(matches!(
        certificates_from_text("junk", b"nothing here\n"),
        Err(PemError::NoCertificate { .. })
    ));
    assert!(matches!(
        private_key_from_text("junk", &[0xff, 0x00, 0x13]),
        Err(PemError::NoPrivateKey { .. })
    ));
    let err = certificates_from_text(
        "bad.crt",
        b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap_err();
    assert!(matches!(err, PemError::Malformed { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("bad.crt: malformed PEM: "),
        "{err}"
    );
    assert!(certificates_from_text("cut.crt", b"-----BEGIN CERTIFICATE-----\nAAEC\n").is_err());
}

#[test]
fn revocation_lists_are_read_and_may_be_absent() {
    let dir = TempDir::new("crl");
    let text = "-----BEGIN X509 CRL-----\nAAEC\n-----END X509 CRL-----\n\
                -----BEGIN X509 CRL-----\nBA==\n-----END X509 CRL-----\n";
    let crls = revocation_lists(&dir.write("list.crl", text)).unwrap();
    let ders: Vec<&[u8]> = crls.iter().map(|c| c.as_ref()).collect();
    assert_eq!(ders, [&[0u8, 1, 2][..], &[4u8][..]]);
    assert!(revocation_lists_from_text("none", b"").unwrap().is_empty());
}
