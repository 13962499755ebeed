//! TLS for the agent's own TCP connections to other members' Postgres, with libpq's meaning of
//! `sslmode`, `sslrootcert`, `sslcert`, `sslkey` and `sslcrl` (Unix-socket connections never
//! use TLS, as with libpq). The replication and pg_rewind connections are libpq's own and read
//! the same options from their conninfo.
//!
//! | sslmode | TLS | server certificate |
//! |---|---|---|
//! | disable | never | - |
//! | allow, prefer (default) | if the server offers it | checked against `sslrootcert` when one is given, else not |
//! | require | always | as prefer |
//! | verify-ca | always | chain checked against `sslrootcert` (`system`: the system store), any host name |
//! | verify-full | always | chain and host name checked |
//!
//! `allow` tries TLS first rather than last: the outcome against a server is the same.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::PgUser;

/// How the agent connects over TCP as one Postgres user.
#[derive(Clone)]
pub struct RemoteTls {
    pub mode: SslMode,
    pub connector: MakeRustlsConnect,
}

impl std::fmt::Debug for RemoteTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTls")
            .field("mode", &self.mode)
            .finish()
    }
}

/// A bad TLS option of a user: the option's name and why.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct TlsOptionError {
    pub field: &'static str,
    pub reason: String,
}

fn option_error(field: &'static str, reason: impl Into<String>) -> TlsOptionError {
    TlsOptionError {
        field,
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verification {
    None,
    Chain,
    ChainAndName,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS settings for `user`'s options; errors name the option.
pub fn remote_tls(user: &PgUser) -> Result<RemoteTls, TlsOptionError> {
    let sslmode = user.sslmode.as_deref().unwrap_or("prefer");
    let root_file = user.sslrootcert.as_deref().filter(|p| !p.is_empty());
    let (mode, verification) = match sslmode {
        "disable" => (SslMode::Disable, Verification::None),
        "allow" | "prefer" | "require" => {
            let mode = if sslmode == "require" {
                SslMode::Require
            } else {
                SslMode::Prefer
            };
            // libpq: with a root certificate given, require behaves as verify-ca.
            let verification = if root_file.is_some() {
                Verification::Chain
            } else {
                Verification::None
            };
            (mode, verification)
        }
        "verify-ca" => (SslMode::Require, Verification::Chain),
        "verify-full" => (SslMode::Require, Verification::ChainAndName),
        other => {
            return Err(option_error(
                "sslmode",
                format!(
                "{other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ),
            ))
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| option_error("sslmode", e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match verification {
        Verification::None => Arc::new(WithoutHostName {
            chain: None,
            provider: provider(),
        }),
        Verification::Chain | Verification::ChainAndName => {
            let roots = root_store(root_file, sslmode)?;
            let mut webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider());
            if let Some(crl) = user.sslcrl.as_deref().filter(|p| !p.is_empty()) {
                webpki = webpki.with_crls(read_crls(crl)?);
            }
            let webpki = webpki
                .build()
                .map_err(|e| option_error("sslrootcert", e.to_string()))?;
            if verification == Verification::Chain {
                Arc::new(WithoutHostName {
                    chain: Some(webpki),
                    provider: provider(),
                })
            } else {
                webpki
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (user.sslcert.as_deref(), user.sslkey.as_deref()) {
        (Some(cert), Some(key)) if !cert.is_empty() && !key.is_empty() => {
            if user.sslpassword.as_deref().is_some_and(|p| !p.is_empty()) {
                return Err(option_error(
                    "sslpassword",
                    "encrypted client keys are not supported: give sslkey unencrypted",
                ));
            }
            let chain = read_certificates("sslcert", cert)?;
            let key = pemfiles::private_key(Path::new(key))
                .map_err(|e| option_error("sslkey", e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| option_error("sslkey", e.to_string()))?
        }
        (Some(cert), None) if !cert.is_empty() => {
            return Err(option_error("sslkey", "sslcert is set without sslkey"))
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(RemoteTls {
        mode,
        connector: MakeRustlsConnect::new(config),
    })
}

fn root_store(file: Option<&str>, sslmode: &str) -> Result<RootCertStore, TlsOptionError> {
    let mut roots = RootCertStore::empty();
    match file {
        None => {
            return Err(option_error(
                "sslrootcert",
                format!("sslmode {sslmode} needs a root certificate file (or \"system\")"),
            ))
        }
        Some("system") => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(option_error(
                    "sslrootcert",
                    "\"system\": no certificate found in the system store",
                ));
            }
        }
        Some(path) => {
            for cert in read_certificates("sslrootcert", path)? {
                roots
                    .add(cert)
                    .map_err(|e| option_error("sslrootcert", format!("{path}: {e}")))?;
            }
        }
    }
    Ok(roots)
}

fn read_certificates(
    field: &'static str,
    path: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsOptionError> {
    pemfiles::certificates(Path::new(path)).map_err(|e| option_error(field, e.to_string()))
}

fn read_crls(path: &str) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsOptionError> {
    pemfiles::revocation_lists(Path::new(path)).map_err(|e| option_error("sslcrl", e.to_string()))
}

/// The server check of `sslmode` prefer/require without a root certificate (`chain: None`:
/// encryption without authentication, as libpq) and of verify-ca (the chain must lead to a
/// trusted root; the name in it does not matter). Handshake signatures are always checked.
#[derive(Debug)]
struct WithoutHostName {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for WithoutHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
