//! TLS on the service's listeners (`[http.tls]`, feature `tls`): rustls, TLS 1.2 and 1.3 only, ALPN
//! for HTTP/2 (gRPC) and HTTP/1.1, client certificates checked against `client_ca` when it is set,
//! and the files watched: a rotated certificate (cert-manager rewrites the secret's files) is
//! served to new connections without a restart, while open connections keep theirs. A set of files
//! that does not load (a key written after its certificate) is retried until it does; meanwhile
//! the last good one is served.

use std::sync::{Arc, RwLock, Weak};

use marty_config::{ClientAuth, ConfigError, ConfigErrors, Origin, TlsConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// The server's TLS configuration, replaced when its files change.
#[derive(Debug)]
pub(crate) struct Tls {
    config: TlsConfig,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    server: Arc<ServerConfig>,
    /// The files' contents it was made from, to see a rotation.
    files: Vec<Vec<u8>>,
}

impl Tls {
    /// Loads the files `config` names; `file` names the configuration in errors.
    pub(crate) fn load(config: &TlsConfig, file: &str) -> Result<Arc<Self>, ConfigErrors> {
        let files = read_files(config).map_err(|(key, problem)| error(file, key, problem))?;
        let server = server_config(config, &files).map_err(|(key, problem)| error(file, key, problem))?;
        Ok(Arc::new(Tls { config: config.clone(), current: RwLock::new(Loaded { server, files }) }))
    }

    /// What a new connection's handshake uses.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).server.clone())
    }

    /// Looks at the files every `watch_interval` until the server is gone, loading a changed set.
    pub(crate) fn watch(self: &Arc<Self>) {
        let tls = Arc::downgrade(self);
        let interval = self.config.watch_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(tls) = Weak::upgrade(&tls) else { return };
                tls.reload_if_changed();
            }
        });
    }

    fn reload_if_changed(&self) {
        let files = match read_files(&self.config) {
            Ok(files) => files,
            Err((key, problem)) => {
                tracing::warn!(key, problem, "cannot read the TLS files; serving the certificate loaded before");
                return;
            }
        };
        if self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).files == files {
            return;
        }
        match server_config(&self.config, &files) {
            Ok(server) => {
                *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Loaded { server, files };
                tracing::info!(cert = %self.config.cert, "loaded the rotated TLS certificate for new connections");
            }
            Err((key, problem)) => {
                tracing::warn!(
                    key,
                    problem,
                    "the changed TLS files do not load (yet); serving the certificate loaded before"
                );
            }
        }
    }
}

fn error(file: &str, key: &str, problem: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        file: file.to_owned(),
        origin: Origin::Missing,
        key: format!("http.tls.{key}"),
        problem,
        help: Some("give PEM files the service can read: the certificate chain (leaf first) and its key".to_owned()),
    }])
}

/// The certificate, key and client CA files' contents, in that order.
fn read_files(config: &TlsConfig) -> Result<Vec<Vec<u8>>, (&'static str, String)> {
    let paths = [("cert", Some(&config.cert)), ("key", Some(&config.key)), ("client_ca", config.client_ca.as_ref())];
    paths
        .into_iter()
        .filter_map(|(key, path)| Some((key, path?)))
        .map(|(key, path)| std::fs::read(path).map_err(|error| (key, format!("cannot read `{path}`: {error}"))))
        .collect()
}

fn server_config(config: &TlsConfig, files: &[Vec<u8>]) -> Result<Arc<ServerConfig>, (&'static str, String)> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files[0])
        .collect::<Result<_, _>>()
        .map_err(|error| ("cert", format!("`{}` is not PEM certificates: {error}", config.cert)))?;
    if certs.is_empty() {
        return Err(("cert", format!("`{}` holds no certificate", config.cert)));
    }
    let key = PrivateKeyDer::from_pem_slice(&files[1])
        .map_err(|error| ("key", format!("`{}` holds no PEM private key: {error}", config.key)))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|error| ("cert", error.to_string()))?;
    let builder = match (&config.client_ca, files.get(2)) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(pem) {
                let ca = ca.map_err(|error| ("client_ca", format!("`{path}` is not PEM certificates: {error}")))?;
                roots.add(ca).map_err(|error| ("client_ca", format!("`{path}`: {error}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match config.client_auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            let verifier = verifier.build().map_err(|error| ("client_ca", format!("`{path}`: {error}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .map_err(|error| ("key", format!("`{}` does not go with `{}`: {error}", config.key, config.cert)))?;
    server.alpn_protocols = match cfg!(feature = "grpc") {
        true => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        false => vec![b"http/1.1".to_vec()],
    };
    Ok(Arc::new(server))
}
