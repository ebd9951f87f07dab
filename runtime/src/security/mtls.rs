//! `[security.mtls]`: a client certificate (verified in the TLS handshake against `[http.tls]
//! client_ca`) as the caller's identity: its first URI subject alternative name (a SPIFFE id,
//! `spiffe://shop.example/ns/prod/sa/orders`), else its first DNS name. `identities` grants each
//! identity its roles and scopes; an identity not listed is authenticated with none.

use std::collections::HashMap;

use marty_config::MtlsConfig;
use rustls_pki_types::CertificateDer;

use super::Principal;
use crate::service::ClientCertificate;

/// The identities `[security.mtls]` grants roles and scopes.
#[derive(Debug)]
pub(super) struct Identities {
    grants: HashMap<String, (Vec<String>, Vec<String>)>,
}

impl Identities {
    pub(super) fn new(config: &MtlsConfig) -> Self {
        let grants = config
            .identities
            .iter()
            .map(|(identity, roles, scopes)| (identity.clone(), (roles.clone(), scopes.clone())))
            .collect();
        Identities { grants }
    }

    /// The caller `certificate` proves; `None` when it names no URI or DNS identity.
    pub(super) fn caller(&self, certificate: &ClientCertificate) -> Option<Principal> {
        let identity = certificate.identity()?.to_owned();
        let (roles, scopes) = self.grants.get(&identity).cloned().unwrap_or_default();
        let claims = serde_json::json!({ "client_certificate": identity });
        Some(Principal::new(identity, roles, scopes, claims))
    }
}

/// The first URI subject alternative name of a DER certificate, else its first DNS name.
pub(crate) fn identity(der: &[u8]) -> Option<String> {
    let der = CertificateDer::from(der);
    let certificate = webpki::EndEntityCert::try_from(&der).ok()?;
    let identity = certificate.valid_uri_names().next().or_else(|| certificate.valid_dns_names().next());
    identity.map(str::to_owned)
}
