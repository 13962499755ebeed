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

/// The configuration key, then what the file holds wrong (the error names the file).
fn invalid(key: &str, error: pemfiles::PemError) -> DcsError {
    DcsError::Protocol(format!("{key}: {error}"))
}

fn load_roots(path: &Path) -> Result<Vec<reqwest::Certificate>, DcsError> {
    const KEY: &str = "etcd3.cacert";
    pemfiles::certificates(path)
        .map_err(|e| invalid(KEY, e))?
        .iter()
        .map(|der| {
            reqwest::Certificate::from_der(der).map_err(|e| {
                DcsError::Protocol(format!(
                    "{KEY}: {}: {}",
                    path.display(),
                    super::client::error_chain(&e)
                ))
            })
        })
        .collect()
}

fn load_identity(cert: &Path, key: Option<&Path>) -> Result<reqwest::Identity, DcsError> {
    const CERT: &str = "etcd3.cert";
    const KEY: &str = "etcd3.key";
    let certs = pemfiles::certificates(cert).map_err(|e| invalid(CERT, e))?;
    // The key comes from etcd3.key when set, else from the certificate file itself.
    let private_key = match key {
        Some(path) => pemfiles::private_key(path).map_err(|e| invalid(KEY, e))?,
        None => pemfiles::private_key(cert).map_err(|e| match e {
            pemfiles::PemError::NoPrivateKey { .. } => {
                DcsError::Protocol(format!("{CERT}: {e}; set etcd3.key to the key file"))
            }
            e => invalid(CERT, e),
        })?,
    };
    // reqwest takes a client identity as PEM only.
    let mut pem: String = certs.iter().map(pemfiles::certificate_pem).collect();
    pem.push_str(&pemfiles::private_key_pem(&private_key));
    reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| {
        DcsError::Protocol(format!(
            "{CERT}: {}: unusable as a client certificate: {}",
            cert.display(),
            super::client::error_chain(&e)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
