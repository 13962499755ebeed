//! The HTTP client settings for calling other members' REST APIs (the HA loop's `GET /patroni`
//! of peers, `regent ctl`), chosen as Patroni's request helper chooses them: the CA from
//! `ctl.cacert`, else `restapi.cafile`; a client certificate from `ctl.certfile`/`ctl.keyfile`;
//! certificate checks skipped with `ctl.insecure` (only without a client certificate); basic
//! auth from `ctl.authentication`, else `restapi.authentication`.

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};

use super::{Config, ConfigError};

fn invalid(key: &str, error: pemfiles::PemError) -> ConfigError {
    ConfigError::invalid(key, error.to_string())
}

/// A client builder with TLS and credentials set; callers add timeouts.
pub fn member_client_builder(cfg: &Config) -> Result<reqwest::ClientBuilder, ConfigError> {
    let mut builder = reqwest::Client::builder();
    let ca = match (&cfg.ctl.cacert, &cfg.restapi.cafile) {
        (Some(path), _) => Some(("ctl.cacert", path)),
        (None, Some(path)) => Some(("restapi.cafile", path)),
        (None, None) => None,
    };
    if let Some((key, path)) = ca {
        for der in pemfiles::certificates(path).map_err(|e| invalid(key, e))? {
            let cert = reqwest::Certificate::from_der(&der)
                .map_err(|e| ConfigError::invalid(key, format!("{}: {e}", path.display())))?;
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(certfile) = &cfg.ctl.certfile {
        let certs = pemfiles::certificates(certfile).map_err(|e| invalid("ctl.certfile", e))?;
        let (key_setting, keyfile) = match &cfg.ctl.keyfile {
            Some(keyfile) => ("ctl.keyfile", keyfile),
            None => ("ctl.certfile", certfile),
        };
        let key = pemfiles::private_key(keyfile);
        // A password is never used: whether the key is encrypted or not, refuse it by name.
        if cfg.ctl.keyfile_password.is_some()
            && matches!(key, Ok(_) | Err(pemfiles::PemError::EncryptedKey { .. }))
        {
            return Err(ConfigError::invalid(
                "ctl.keyfile_password",
                "encrypted private keys are not supported; store the key unencrypted",
            ));
        }
        let key = key.map_err(|e| invalid(key_setting, e))?;
        // reqwest takes a client identity as PEM only.
        let mut pem: String = certs.iter().map(pemfiles::certificate_pem).collect();
        pem.push_str(&pemfiles::private_key_pem(&key));
        let identity = reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| {
            ConfigError::invalid("ctl.certfile", format!("{}: {e}", certfile.display()))
        })?;
        builder = builder.identity(identity);
    } else if cfg.ctl.insecure {
        builder = builder.danger_accept_invalid_certs(true);
    }
    if let Some(auth) = cfg
        .ctl
        .authentication
        .as_ref()
        .or(cfg.restapi.authentication.as_ref())
    {
        let credentials = rest::security::basic_credentials(&auth.username, &auth.password);
        let mut value = HeaderValue::from_str(&credentials).map_err(|_| {
            ConfigError::invalid(
                "ctl.authentication",
                "credentials are not valid in a header",
            )
        })?;
        value.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    Ok(builder)
}

/// The client for calling other members, with its timeouts; `Err` names the setting that makes
/// it impossible (a client without the configured TLS or credentials would be worse than none).
pub fn member_client(
    cfg: &Config,
    timeout: std::time::Duration,
    connect_timeout: std::time::Duration,
) -> Result<reqwest::Client, ConfigError> {
    member_client_builder(cfg)?
        .timeout(timeout)
        .connect_timeout(connect_timeout)
        .build()
        .map_err(|e| ConfigError::invalid("ctl", format!("cannot build the HTTP client: {e}")))
}
