//! `[tls]` (SPEC 9): HTTPS on the API, validated into [`TlsConfig`]: which files hold
//! the certificate chain, its key and the client CA, how client certificates are asked
//! for, and whether registering needs one.
//!
//! Must not read the PEM files: `tls::load` does, for `switchboard check`, at start
//! and on each reload, so a file that changed is read again.

use std::path::PathBuf;

use super::error::{ConfigError, invalid};
use super::file::FileTls;
pub use crate::tls::{ClientAuth, TlsConfig};

/// `[tls]`, when present: `cert` and `key` both set; `client_auth` one of the three
/// words and, unless `"none"`, with a `client_ca`; requiring a client certificate to
/// register only when certificates are asked for.
pub(super) fn merge(file: Option<FileTls>) -> Result<Option<TlsConfig>, ConfigError> {
    let Some(t) = file else {
        return Ok(None);
    };
    let path = |key: &str, value: Option<String>| -> Result<PathBuf, ConfigError> {
        match value {
            Some(v) if !v.trim().is_empty() => Ok(PathBuf::from(v)),
            _ => Err(invalid(
                key,
                "is required in [tls]: the path of a PEM file (leave out [tls] for plain HTTP)",
            )),
        }
    };
    let cert = path("tls.cert", t.cert)?;
    let key = path("tls.key", t.key)?;
    let client_auth = match t.client_auth.as_deref() {
        None | Some("none") => ClientAuth::None,
        Some("optional") => ClientAuth::Optional,
        Some("required") => ClientAuth::Required,
        Some(other) => {
            return Err(invalid(
                "tls.client_auth",
                format!("{other:?}: expected \"none\", \"optional\" or \"required\""),
            ));
        }
    };
    let client_ca = match t.client_ca {
        Some(ca) => Some(path("tls.client_ca", Some(ca))?),
        None => None,
    };
    if client_auth != ClientAuth::None && client_ca.is_none() {
        return Err(invalid(
            "tls.client_ca",
            "is required when tls.client_auth is \"optional\" or \"required\": \
             the CA certificates client certificates are verified against",
        ));
    }
    let register_requires_client_cert = t.register_requires_client_cert.unwrap_or(false);
    if register_requires_client_cert && client_auth == ClientAuth::None {
        return Err(invalid(
            "tls.register_requires_client_cert",
            "needs tls.client_auth = \"optional\" or \"required\" (and tls.client_ca): \
             without them no client certificate is ever asked for",
        ));
    }
    Ok(Some(TlsConfig {
        key_prefix: "tls.".to_owned(),
        cert,
        key,
        client_ca,
        client_auth,
        register_requires_client_cert,
    }))
}

#[cfg(test)]
mod tests {
    use crate::cli::ServeArgs;
    use crate::config::{ClientAuth, Config};

    fn load(text: &str) -> Result<Config, String> {
        Config::from_toml(text, &ServeArgs::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn tls_keys_are_validated_and_named() {
        let c = load("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"").unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert.to_str(), Some("c.pem"));
        assert_eq!(tls.client_auth, ClientAuth::None);
        assert!(!tls.register_requires_client_cert);
        assert!(load("").unwrap().tls.is_none());

        let err = load("[tls]\ncert = \"c.pem\"").unwrap_err();
        assert!(err.contains("tls.key"), "{err}");
        let err =
            load("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_auth = \"maybe\"").unwrap_err();
        assert!(err.contains("tls.client_auth"), "{err}");
        let err = load("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_auth = \"required\"")
            .unwrap_err();
        assert!(err.contains("tls.client_ca"), "{err}");
        let err =
            load("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nregister_requires_client_cert = true")
                .unwrap_err();
        assert!(err.contains("tls.register_requires_client_cert"), "{err}");
        let err = load("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\ncrt = \"x\"").unwrap_err();
        assert!(err.contains("crt"), "{err}");

        let c = load(
            "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\n\
             client_auth = \"optional\"\nregister_requires_client_cert = true",
        )
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.client_auth, ClientAuth::Optional);
        assert!(tls.register_requires_client_cert);
    }

    #[test]
    fn a_client_certificate_to_register_stands_for_the_register_token_off_loopback() {
        let args = ServeArgs {
            http: Some("0.0.0.0:8443".into()),
            ..ServeArgs::default()
        };
        let mtls = "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\n\
                    client_auth = \"required\"\nregister_requires_client_cert = true";
        assert!(Config::from_toml(mtls, &args).is_ok());
        // TLS alone does not say who may register.
        assert!(Config::from_toml("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"", &args).is_err());
    }
}
