//! `[http.tls]` with real handshakes: certificates made with openssl, clients speaking rustls.
//! Plain text to the TLS port gets no answer; under `client_auth = "required"` a client without a
//! certificate, or with one from another CA, is refused, and one from the CA is served with its
//! certificate in the request; a rotated certificate is served to new connections without a
//! restart while an open connection keeps being served.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use marty::axum::routing::get;
use marty::axum::{Extension, Router};
use marty::config::Config;
use marty::service::{ClientCertificate, RunningServer, Server};
use marty::{DependencyRegistry, Runtime};
use marty_tests::tls::certificates_in;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A service saying whether its caller presented a certificate, on `[http.tls]` with `tls` settings.
async fn serve(tls: &str) -> RunningServer {
    let text = format!("[http.tls]\n{tls}watch_interval = \"100ms\"\n");
    let runtime = Runtime::new(DependencyRegistry::from_config(Config::parse(&text, "marty.toml").unwrap()));
    let hello = |certificate: Option<Extension<ClientCertificate>>| async move {
        match certificate {
            Some(Extension(certificate)) if !certificate.der().is_empty() => "hello, certified caller",
            _ => "hello, anonymous caller",
        }
    };
    let server = Server::new(Router::new().route("/hello", get(hello)), &runtime).unwrap();
    server.start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap()
}

fn server_files(dir: &Path) -> String {
    format!("cert = \"{}\"\nkey = \"{}\"\n", dir.join("server.pem").display(), dir.join("server-key.pem").display())
}

/// A client trusting the CA in `trusted`, presenting the client certificate in `identity` if given.
fn client(trusted: &Path, identity: Option<&Path>) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(trusted.join("ca.pem")).unwrap()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some(dir) => {
            let chain = vec![CertificateDer::from_pem_file(dir.join("client.pem")).unwrap()];
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(dir.join("client-key.pem")).unwrap())
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    TlsConnector::from(Arc::new(config))
}

async fn connect(addr: SocketAddr, connector: &TlsConnector) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::IpAddress(addr.ip().into());
    connector.connect(name, TcpStream::connect(addr).await?).await
}

/// One `GET /hello` on `stream`, kept open; the response's status line and body.
async fn hello(stream: &mut TlsStream<TcpStream>) -> std::io::Result<String> {
    stream.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    while !response.windows(6).any(|window| window == b"caller") {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        response.extend_from_slice(&buffer[..read]);
    }
    let text = String::from_utf8_lossy(&response);
    let status = text.lines().next().unwrap_or_default().to_owned();
    Ok(format!("{status} {}", text.rsplit("\r\n\r\n").next().unwrap_or_default()))
}

async fn call(addr: SocketAddr, connector: &TlsConnector) -> std::io::Result<String> {
    hello(&mut connect(addr, connector).await?).await
}

#[tokio::test]
async fn clients_need_tls_and_under_required_client_auth_a_certificate_from_the_ca() {
    let dir = certificates_in("https-required");
    let other = certificates_in("https-other-ca");
    let ca = format!("client_ca = \"{}\"\n", dir.join("ca.pem").display());
    let service = serve(&format!("{}{ca}", server_files(&dir))).await;
    let addr = service.addr();

    let served = call(addr, &client(&dir, Some(&dir))).await.unwrap();
    assert_eq!(served, "HTTP/1.1 200 OK hello, certified caller");
    assert!(call(addr, &client(&dir, None)).await.is_err(), "served without a client certificate");
    assert!(call(addr, &client(&dir, Some(&other))).await.is_err(), "served a certificate of another CA");
    // Plain HTTP to the TLS port: the handshake fails and no HTTP answer comes back.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(!answer.starts_with(b"HTTP/1.1"), "{}", String::from_utf8_lossy(&answer));
    service.shutdown().await.unwrap();

    // `optional`: anonymous callers are served, without a certificate in their requests.
    let optional = serve(&format!("{}{ca}client_auth = \"optional\"\n", server_files(&dir))).await;
    let anonymous = call(optional.addr(), &client(&dir, None)).await.unwrap();
    assert_eq!(anonymous, "HTTP/1.1 200 OK hello, anonymous caller");
    assert!(call(optional.addr(), &client(&dir, Some(&other))).await.is_err(), "a certificate that does not verify");
    optional.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart_or_dropping_connections() {
    let (first, second) = (certificates_in("https-rotation-1"), certificates_in("https-rotation-2"));
    let live = std::env::temp_dir().join(format!("marty-https-live-{}", std::process::id()));
    std::fs::create_dir_all(&live).unwrap();
    for file in ["server.pem", "server-key.pem"] {
        std::fs::copy(first.join(file), live.join(file)).unwrap();
    }
    let service = serve(&server_files(&live)).await;
    let addr = service.addr();
    let mut open = connect(addr, &client(&first, None)).await.unwrap();
    assert_eq!(hello(&mut open).await.unwrap(), "HTTP/1.1 200 OK hello, anonymous caller");

    // cert-manager writes the new pair; a client trusting only the new CA gets in once it loads.
    for file in ["server-key.pem", "server.pem"] {
        std::fs::copy(second.join(file), live.join(file)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(addr, &client(&second, None)).await.is_err() {
        assert!(Instant::now() < deadline, "the rotated certificate was never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(call(addr, &client(&first, None)).await.is_err(), "new connections still get the old certificate");
    // The connection opened before the rotation is still served.
    assert_eq!(hello(&mut open).await.unwrap(), "HTTP/1.1 200 OK hello, anonymous caller");
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn tls_files_that_do_not_load_stop_startup_naming_the_key() {
    let text = "[http.tls]\ncert = \"/nonexistent/tls.crt\"\nkey = \"/nonexistent/tls.key\"\n";
    let runtime = Runtime::new(DependencyRegistry::from_config(Config::parse(text, "marty.toml").unwrap()));
    let error = Server::new(Router::new(), &runtime).unwrap_err().to_string();
    assert!(error.contains("http.tls.cert") && error.contains("/nonexistent/tls.crt"), "{error}");
}

#[tokio::test]
async fn a_client_certificate_is_the_callers_identity_under_security_mtls() {
    let dir = certificates_in("https-identity");
    let text = format!(
        "[http.tls]\n{}client_ca = \"{}\"\nclient_auth = \"optional\"\n\
         [security]\nroles = [\"clerk\"]\n[security.mtls.identities]\n\"localhost\" = {{ roles = [\"clerk\"] }}\n",
        server_files(&dir),
        dir.join("ca.pem").display()
    );
    let runtime = Runtime::new(DependencyRegistry::from_config(Config::parse(&text, "marty.toml").unwrap()));
    // The test certificates name `localhost` (and 127.0.0.1) as their subject alternative names.
    let whoami =
        |caller: marty::security::Principal| async move { format!("{} {:?} caller", caller.subject(), caller.roles()) };
    let server = Server::new(Router::new().route("/hello", get(whoami)), &runtime).unwrap();
    let service = server.start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();

    let certified = call(service.addr(), &client(&dir, Some(&dir))).await.unwrap();
    assert_eq!(certified, "HTTP/1.1 200 OK localhost [\"clerk\"] caller");
    let mut anonymous = connect(service.addr(), &client(&dir, None)).await.unwrap();
    anonymous.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    let _ = anonymous.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "no certificate, no identity: {answer}");
    service.shutdown().await.unwrap();

    // Identities without client certificates to prove them are a configuration error.
    let error = Config::parse("[security]\n[security.mtls]\n", "marty.toml").unwrap_err().to_string();
    assert!(error.contains("security.mtls") && error.contains("client_ca"), "{error}");
}
