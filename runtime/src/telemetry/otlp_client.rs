//! How OTLP reaches the collector: TLS for an `https://` endpoint, and the `http/protobuf` client.
//!
//! TLS follows the OTLP exporter specification's variables: the CA in
//! `OTEL_EXPORTER_OTLP_CERTIFICATE` when set (else the Mozilla roots), and a client certificate from
//! `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and `OTEL_EXPORTER_OTLP_CLIENT_KEY` (mTLS); each is looked
//! up under the signal's own name first (`OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`, `..._METRICS_...`).
//! The files are read when the exporter is built, so a missing one is named at startup.
//!
//! `http/protobuf` goes through ureq (rustls on ring): a blocking client for the exporters' own
//! threads that, unlike reqwest's rustls, needs no process-wide crypto provider, so enabling `otel`
//! changes nothing for the other TLS clients of the service.

use std::time::Duration;

use opentelemetry_http::{Bytes, HttpError, Request, Response};

/// The certificates an exporter of one signal trusts and presents, as PEM, each with the variable
/// that named its file (for errors).
pub(crate) struct OtlpTls {
    ca: Option<Pem>,
    client: Option<(Pem, Pem)>,
}

struct Pem {
    variable: String,
    text: Vec<u8>,
}

impl OtlpTls {
    /// For `signal` (`TRACES`, `METRICS`), from the environment. A CA file with no certificate in
    /// it is an error here rather than a trust store that trusts nothing.
    pub(crate) fn from_env(signal: &str) -> Result<OtlpTls, String> {
        let file = |what: &str| -> Result<Option<Pem>, String> {
            let names = [format!("OTEL_EXPORTER_OTLP_{signal}_{what}"), format!("OTEL_EXPORTER_OTLP_{what}")];
            let Some((variable, path)) = names.into_iter().find_map(|name| {
                Some((name.clone(), std::env::var(&name).ok().filter(|path| !path.trim().is_empty())?))
            }) else {
                return Ok(None);
            };
            let text =
                std::fs::read(path.trim()).map_err(|error| format!("{variable} `{path}` cannot be read: {error}"))?;
            Ok(Some(Pem { variable, text }))
        };
        let client = match (file("CLIENT_CERTIFICATE")?, file("CLIENT_KEY")?) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(given), None) | (None, Some(given)) => {
                return Err(format!("{} is set without its pair: a client certificate needs its key", given.variable))
            }
        };
        let ca = file("CERTIFICATE")?;
        if let Some(ca) = &ca {
            certificates(ca)?;
        }
        Ok(OtlpTls { ca, client })
    }

    /// For gRPC (tonic), which checks the server's name against the endpoint's host.
    pub(crate) fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        let config = tonic::transport::ClientTlsConfig::new();
        let mut config = match &self.ca {
            Some(ca) => config.ca_certificate(tonic::transport::Certificate::from_pem(&ca.text)),
            None => config.with_webpki_roots(),
        };
        if let Some((cert, key)) = &self.client {
            config = config.identity(tonic::transport::Identity::from_pem(&cert.text, &key.text));
        }
        config
    }

    /// The `http/protobuf` client, giving up on a request after `timeout`.
    pub(crate) fn http_client(&self, timeout: Duration) -> Result<OtlpHttpClient, String> {
        use ureq::tls::{ClientCert, PrivateKey, RootCerts, TlsConfig};
        let mut tls = TlsConfig::builder();
        if let Some(ca) = &self.ca {
            tls = tls.root_certs(RootCerts::new_with_certs(&certificates(ca)?));
        }
        if let Some((cert, key)) = &self.client {
            let private_key = PrivateKey::from_pem(&key.text).map_err(|error| format!("{}: {error}", key.variable))?;
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&certificates(cert)?, private_key)));
        }
        let agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .timeout_global(Some(timeout))
            // The exporter reads the status itself (and the collector's partial-success body).
            .http_status_as_error(false)
            .build()
            .new_agent();
        Ok(OtlpHttpClient(agent))
    }
}

/// The certificates in `pem`: at least one, or an error naming its variable.
fn certificates(pem: &Pem) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let certificates = ureq::tls::parse_pem(&pem.text)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => Some(Ok(cert)),
            Ok(_) => None,
            Err(error) => Some(Err(format!("{}: {error}", pem.variable))),
        })
        .collect::<Result<Vec<_>, String>>()?;
    match certificates.is_empty() {
        true => Err(format!("{}: the file holds no PEM certificate", pem.variable)),
        false => Ok(certificates),
    }
}

/// Sends OTLP `http/protobuf` requests, blocking the exporter's thread (the trace exporter's own;
/// `spawn_blocking` for metrics).
#[derive(Debug, Clone)]
pub(crate) struct OtlpHttpClient(ureq::Agent);

impl OtlpHttpClient {
    pub(crate) fn send(&self, request: Request<Vec<u8>>) -> Result<Response<Bytes>, ureq::Error> {
        let (parts, body) = self.0.run(request)?.into_parts();
        Ok(Response::from_parts(parts, Bytes::from(body.into_with_config().limit(4 << 20).read_to_vec()?)))
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        Ok(self.send(request.map(|body| body.to_vec()))?)
    }
}
