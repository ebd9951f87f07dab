//! TLS for tests: certificates made with `openssl`, and a proxy that terminates TLS in front of a
//! plain server (RabbitMQ, an OTLP collector), so a client's `amqps://` or `https://` is tested
//! against a real handshake without reconfiguring the shared server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A fresh directory named after `name` (and this process) holding the [`certificates`].
pub fn certificates_in(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("marty-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    dir
}

/// A CA (`ca.pem`), a server certificate for 127.0.0.1 and localhost (`server.pem`,
/// `server-key.pem`) and a client certificate (`client.pem`, `client-key.pem`), made in `dir`.
pub fn certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl").args(args).current_dir(dir).stderr(Stdio::null()).status();
        assert!(status.expect("openssl is installed").success(), "openssl {args:?}");
    };
    let ca = ["-days", "1", "-subj", "/CN=marty-test-ca", "-keyout", "ca-key.pem", "-out", "ca.pem"];
    openssl(&[&["req", "-x509", "-newkey", "rsa:2048", "-nodes"][..], &ca[..]].concat());
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    for name in ["server", "client"] {
        let (key, csr, cert) = (format!("{name}-key.pem"), format!("{name}.csr"), format!("{name}.pem"));
        let subject = format!("/CN={name}");
        openssl(&["req", "-newkey", "rsa:2048", "-nodes", "-subj", &subject, "-keyout", &key, "-out", &csr]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            &cert,
        ]);
    }
}

/// Terminates TLS with the server certificate of [`certificates`] and forwards each connection's
/// bytes to a plain `upstream`. ALPN offers `h2` and `http/1.1`, so gRPC clients get HTTP/2.
pub struct TlsProxy {
    pub addr: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    /// With `verify_clients`, a client must present a certificate signed by the CA in `dir`.
    pub async fn start(upstream: SocketAddr, dir: &Path, verify_clients: bool) -> TlsProxy {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("server.pem")).unwrap().map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_file(dir.join("server-key.pem")).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if verify_clients {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
                roots.add(ca.unwrap()).unwrap();
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(certs, key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A refused handshake (no client certificate, an unknown CA) just closes.
                    let Ok(mut client) = acceptor.accept(client).await else { return };
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        TlsProxy { addr, accepting }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}
