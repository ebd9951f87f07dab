//! `[http.tls]`: the service's certificate, and the clients' when it asks for them (mTLS).

use std::time::Duration;

use crate::read::{join, Reader, Table};

/// `[http.tls]`: HTTPS (and gRPC over TLS) on `[http] addr` and `[grpc] addr`, TLS 1.2 and 1.3 only.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// The certificate chain, PEM (leaf first), as cert-manager writes `tls.crt`.
    pub cert: String,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// The CAs that client certificates must chain to (PEM); set, clients are asked for one.
    pub client_ca: Option<String>,
    /// Whether a client without a certificate is refused (`"required"`, the default with
    /// `client_ca`) or served as anonymous (`"optional"`).
    pub client_auth: ClientAuth,
    /// How often the files are looked at for a rotation (default `10s`); a changed set is loaded
    /// for new connections, the open ones keep theirs.
    pub watch_interval: Duration,
}

/// What a client without a certificate gets, when `client_ca` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Clients are not asked for a certificate (no `client_ca`).
    None,
    /// Refused at the handshake.
    Required,
    /// Served, without the identity a certificate gives.
    Optional,
}

pub(crate) fn read_tls(reader: &mut Reader<'_>, http: &Table<'_>) -> Option<TlsConfig> {
    let table = reader.table(http, "tls")?;
    reader.deny_unknown_keys(&table, &["cert", "key", "client_ca", "client_auth", "watch_interval"]);
    let required = |reader: &mut Reader<'_>, key: &str, example: &str| {
        let value = reader.string(&table, key);
        if value.is_none() && !reader.has(&table, key) {
            let origin = reader.origin_of(&table, key).clone();
            let help = Some(format!("add `{key} = \"{example}\"` (PEM)"));
            reader.error(&origin, &join(&table.path, key), "missing key", help);
        }
        value
    };
    let cert = required(reader, "cert", "/etc/tls/tls.crt");
    let key = required(reader, "key", "/etc/tls/tls.key");
    let client_ca = reader.string(&table, "client_ca");
    let client_auth = match (reader.choice(&table, "client_auth", &["required", "optional"]).as_deref(), &client_ca) {
        (Some(_), None) => {
            let origin = reader.origin_of(&table, "client_auth").clone();
            let help = Some("add `client_ca = \"/etc/tls/ca.crt\"`, the CA client certificates chain to".to_owned());
            reader.error(&origin, "http.tls.client_auth", "client certificates without a CA to check them", help);
            return None;
        }
        (Some("optional"), Some(_)) => ClientAuth::Optional,
        (_, Some(_)) => ClientAuth::Required,
        (None, None) => ClientAuth::None,
    };
    let watch_interval = reader.duration(&table, "watch_interval").unwrap_or(Duration::from_secs(10));
    Some(TlsConfig { cert: cert?, key: key?, client_ca, client_auth, watch_interval })
}

#[cfg(test)]
mod tests {
    use super::ClientAuth;
    use crate::Config;

    #[test]
    fn tls_needs_a_certificate_and_key_and_client_auth_a_ca() {
        let config =
            Config::parse("[http.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\n", "m").unwrap();
        let tls = config.http.tls.unwrap();
        assert_eq!((tls.cert.as_str(), tls.client_auth), ("c.pem", ClientAuth::Required));
        let errors = |text: &str| Config::parse(text, "marty.toml").unwrap_err().to_string();
        let no_key = errors("[http.tls]\ncert = \"c.pem\"\n");
        assert!(no_key.contains("http.tls.key") && no_key.contains("missing key"), "{no_key}");
        let no_ca = errors("[http.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_auth = \"required\"\n");
        assert!(no_ca.contains("http.tls.client_auth") && no_ca.contains("client_ca"), "{no_ca}");
    }
}
