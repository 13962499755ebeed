//! TLS material of the etcd connection (`etcd3.cacert`, `etcd3.cert`, `etcd3.key`), read and
//! checked once at construction so a wrong path or file is reported at startup, naming the key.

use std::path::Path;

use crate::DcsError;

/// Trust anchors and client identity to install in the HTTP client.
#[derive(Default)]
pub(crate) struct TlsMaterial {
    /// `Some`: trust exactly these CAs. `None`: the system trust store (as Patroni does).
    pub(crate) roots: Option<Vec<reqwest::Certificate>>,
    pub(crate) identity: Option<reqwest::Identity>,
}

impl TlsMaterial {
    /// Read the files. `key` without `cert` is ignored (with a warning), as Patroni does; `cert`
    /// without `key` must hold the private key too.
    pub(crate) fn load(
        cacert: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<TlsMaterial, DcsError> {
        let roots = cacert.map(load_roots).transpose()?;
        let identity = match (cert, key) {
            (Some(cert), key) => Some(load_identity(cert, key)?),
            (None, Some(key)) => {
                tracing::warn!(
                    key = %key.display(),
                    "etcd3.key is set without etcd3.cert: no client certificate is sent"
                );
                None
            }
            (None, None) => None,
        };
        Ok(TlsMaterial { roots, identity })
    }

    /// Install the material; `https` tells whether any endpoint needs TLS at all (the system
    /// trust store is only loaded then).
    pub(crate) fn apply(
        self,
        builder: reqwest::ClientBuilder,
        https: bool,
    ) -> reqwest::ClientBuilder {
        let mut builder = builder
            .use_rustls_tls()
            .tls_built_in_root_certs(https && self.roots.is_none());
        for ca in self.roots.into_iter().flatten() {
            builder = builder.add_root_certificate(ca);
        }
        if let Some(identity) = self.identity {
            builder = builder.identity(identity);
        }
        builder
    }
}

fn invalid(key: &str, path: &Path, why: impl std::fmt::Display) -> DcsError {
    DcsError::Protocol(format!("{key}: {}: {why}", path.display()))
}

fn read(key: &str, path: &Path) -> Result<String, DcsError> {
    let bytes = std::fs::read(path)
        .map_err(|e| DcsError::Protocol(format!("{key}: cannot read {}: {e}", path.display())))?;
    String::from_utf8(bytes).map_err(|_| invalid(key, path, "not a PEM file (not text)"))
}

fn load_roots(path: &Path) -> Result<Vec<reqwest::Certificate>, DcsError> {
    const KEY: &str = "etcd3.cacert";
    let text = read(KEY, path)?;
    let blocks = pem_blocks(&text).map_err(|why| invalid(KEY, path, why))?;
    let pem: String = blocks
        .iter()
        .filter(|b| b.label == "CERTIFICATE")
        .map(|b| b.text)
        .collect::<Vec<_>>()
        .join("\n");
    if pem.is_empty() {
        return Err(invalid(KEY, path, "contains no PEM certificate"));
    }
    let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
        .map_err(|e| invalid(KEY, path, super::client::error_chain(&e)))?;
    Ok(certs)
}

fn load_identity(cert: &Path, key: Option<&Path>) -> Result<reqwest::Identity, DcsError> {
    const CERT: &str = "etcd3.cert";
    const KEY: &str = "etcd3.key";
    let cert_text = read(CERT, cert)?;
    let cert_blocks = pem_blocks(&cert_text).map_err(|why| invalid(CERT, cert, why))?;
    let certs: Vec<&str> = cert_blocks
        .iter()
        .filter(|b| b.label == "CERTIFICATE")
        .map(|b| b.text)
        .collect();
    if certs.is_empty() {
        return Err(invalid(CERT, cert, "contains no PEM certificate"));
    }
    // The key comes from etcd3.key when set, else from the certificate file itself.
    let key_text;
    let (key_name, key_path, key_blocks) = match key {
        Some(path) => {
            key_text = read(KEY, path)?;
            let blocks = pem_blocks(&key_text).map_err(|why| invalid(KEY, path, why))?;
            (KEY, path, blocks)
        }
        None => (CERT, cert, cert_blocks),
    };
    if key_blocks
        .iter()
        .any(|b| b.label == "ENCRYPTED PRIVATE KEY")
    {
        return Err(invalid(
            key_name,
            key_path,
            "encrypted private keys are not supported",
        ));
    }
    let keys: Vec<&str> = key_blocks
        .iter()
        .filter(|b| is_private_key(b.label))
        .map(|b| b.text)
        .collect();
    let Some(private_key) = keys.first() else {
        let why = if key.is_some() {
            "contains no PEM private key"
        } else {
            "contains no PEM private key; set etcd3.key to the key file"
        };
        return Err(invalid(key_name, key_path, why));
    };
    if keys.len() > 1 {
        return Err(invalid(
            key_name,
            key_path,
            "contains more than one private key",
        ));
    }
    let mut pem = certs.join("\n");
    pem.push('\n');
    pem.push_str(private_key);
    pem.push('\n');
    reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| {
        invalid(
            CERT,
            cert,
            format!(
                "unusable as a client certificate: {}",
                super::client::error_chain(&e)
            ),
        )
    })
}

fn is_private_key(label: &str) -> bool {
    matches!(label, "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY")
}

/// One `-----BEGIN <label>-----` ... `-----END <label>-----` block, `text` including both lines.
struct PemBlock<'a> {
    label: &'a str,
    text: &'a str,
}

/// Split PEM text into blocks; text between blocks (OpenSSL's "Bag Attributes", comments) is
/// skipped. Keeping only the blocks we need lets files with extra sections (`EC PARAMETERS`)
/// work.
fn pem_blocks(text: &str) -> Result<Vec<PemBlock<'_>>, String> {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END ";
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let block = &rest[start..];
        let label_end = block[BEGIN.len()..]
            .find("-----")
            .ok_or_else(|| "malformed PEM BEGIN line".to_string())?;
        let label = &block[BEGIN.len()..BEGIN.len() + label_end];
        let end_line = format!("{END}{label}-----");
        let end = block
            .find(&end_line)
            .ok_or_else(|| format!("PEM block '{label}' has no END line"))?;
        let len = end + end_line.len();
        blocks.push(PemBlock {
            label,
            text: &block[..len],
        });
        rest = &block[len..];
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_are_split_and_extra_text_skipped() {
        let text =
            "Bag Attributes\n-----BEGIN EC PARAMETERS-----\nBggq\n-----END EC PARAMETERS-----\n\
                    -----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIVATE KEY-----\n";
        let blocks = pem_blocks(text).unwrap();
        let labels: Vec<_> = blocks.iter().map(|b| b.label).collect();
        assert_eq!(labels, ["EC PARAMETERS", "EC PRIVATE KEY"]);
        assert_eq!(
            blocks[1].text,
            "-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIVATE KEY-----"
        );
        assert!(pem_blocks("-----BEGIN CERTIFICATE-----\nabc\n").is_err());
        assert!(pem_blocks("no pem here").unwrap().is_empty());
    }

    #[test]
    fn unreadable_and_empty_files_name_the_key() {
        let dir = std::env::temp_dir().join(format!("dcs-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let err = TlsMaterial::load(Some(&missing), None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("etcd3.cacert: cannot read") && err.contains("missing.pem"),
            "{err}"
        );

        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "nothing\n").unwrap();
        let err = TlsMaterial::load(Some(&empty), None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("etcd3.cacert") && err.contains("no PEM certificate"),
            "{err}"
        );
        let err = TlsMaterial::load(None, Some(&empty), None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("etcd3.cert") && err.contains("no PEM certificate"),
            "{err}"
        );
        let err = TlsMaterial::load(None, Some(&empty), Some(&missing))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("etcd3.cert"), "{err}");

        // A key alone is ignored, like Patroni does.
        assert!(TlsMaterial::load(None, None, Some(&missing)).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
