//! A token issuer for development and tests, **never for production**: it holds its signing key in
//! memory (a new one each start), knows its clients from code, and serves only on a loopback
//! address. It is what `[security.jwt]` and `[security.clients.<name>]` point at on a laptop or in
//! CI, where a real issuer (Keycloak, Auth0, Entra ID) is not at hand:
//!
//! - `GET /jwks.json`: its public key (ES256), for `jwks_url`;
//! - `GET /.well-known/openid-configuration`: the same, by OpenID Connect discovery;
//! - `POST /token`: the OAuth2 client-credentials grant, for [`TokenSource`](super::TokenSource).
//!
//! Its tokens carry the caller's roles in `roles` and scopes in `scope` (Marty's defaults for
//! `roles_claim` and `scopes_claim`) and live 15 minutes.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use marty::security::DevIssuer;
//! let issuer = DevIssuer::new("dev-issuer", "orders").client("billing", "dev-secret", &["clerk"], &[]);
//! let addr = issuer.serve(tokio::net::TcpListener::bind("127.0.0.1:0").await?).await?;
//! // [security.jwt] issuer = "dev-issuer", audiences = ["orders"], jwks_url = "http://{addr}/jwks.json"
//! let token = issuer.token("alice", &["clerk"], &["orders:read"]);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

use super::api_keys::equal_in_constant_time;

/// How long the tokens it issues live.
const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// A development issuer: clone it freely (the clones share the key).
#[derive(Clone)]
pub struct DevIssuer {
    issuer: String,
    audience: String,
    key: Arc<SigningKey>,
    clients: Vec<Client>,
}

struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

/// A client the token endpoint knows: the SHA-256 of its secret, and what its tokens grant.
#[derive(Clone)]
struct Client {
    id: String,
    secret_sha256: Vec<u8>,
    roles: Vec<String>,
    scopes: Vec<String>,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl DevIssuer {
    /// An issuer named `issuer` (the tokens' `iss`, `[security.jwt] issuer`) for the services of
    /// `audience` (`aud`, one of `[security.jwt] audiences`), with a signing key generated now.
    pub fn new(issuer: &str, audience: &str) -> Self {
        let rng = SystemRandom::new();
        // Generating and reading back a P-256 key fail only if the system has no randomness.
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("the system's random number generator works");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("a key pair ring generated reads back");
        // The public key is an uncompressed point: 0x04, then x and y.
        let point = pair.public_key().as_ref();
        let kid = base64url(&ring::digest::digest(&ring::digest::SHA256, point).as_ref()[..8]);
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": base64url(&point[1..33]), "y": base64url(&point[33..]),
        });
        let encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
        DevIssuer {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            key: Arc::new(SigningKey { kid, encoding, jwk }),
            clients: Vec::new(),
        }
    }

    /// Lets client `id` with `secret` get tokens granting `roles` and `scopes` at `POST /token`.
    pub fn client(mut self, id: &str, secret: &str, roles: &[&str], scopes: &[&str]) -> Self {
        self.clients.retain(|client| client.id != id);
        self.clients.push(Client {
            id: id.to_owned(),
            secret_sha256: ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref().to_vec(),
            roles: roles.iter().map(|role| (*role).to_owned()).collect(),
            scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
        });
        self
    }

    /// A token for `subject` granting `roles` and `scopes`, valid for 15 minutes.
    pub fn token(&self, subject: &str, roles: &[&str], scopes: &[&str]) -> String {
        self.sign(subject, roles, &scopes.join(" "))
    }

    /// Serves the issuer on `listener`, which must be on a loopback address, until the process ends;
    /// answers the address it serves on.
    pub async fn serve(&self, listener: tokio::net::TcpListener) -> std::io::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a development issuer serves only on a loopback address, not {addr}: it is not for production"),
            ));
        }
        let router = Router::new()
            .route("/jwks.json", get(jwks))
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/token", post(token))
            .with_state((self.clone(), addr));
        tracing::warn!(target: "marty::security", %addr, issuer = %self.issuer, "a development token issuer is serving: never use it in production");
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(target: "marty::security", %error, "the development issuer stopped");
            }
        });
        Ok(addr)
    }

    /// A signed token; `scope` is space-separated.
    fn sign(&self, subject: &str, roles: &[&str], scope: &str) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = json!({
            "iss": self.issuer, "aud": self.audience, "sub": subject,
            "iat": now, "nbf": now, "exp": now + TOKEN_LIFETIME.as_secs(),
            "roles": roles, "scope": scope,
        });
        let header = Header { kid: Some(self.key.kid.clone()), ..Header::new(Algorithm::ES256) };
        // Signing JSON with a key ring made fails only if the system has no randomness.
        jsonwebtoken::encode(&header, &claims, &self.key.encoding).expect("signing with the generated key works")
    }

    /// The client `id` with `secret`, compared in constant time.
    fn authenticate(&self, id: &str, secret: &str) -> Option<&Client> {
        let presented = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        self.clients
            .iter()
            .find(|client| client.id == id)
            .filter(|client| equal_in_constant_time(presented.as_ref(), &client.secret_sha256))
    }
}

type Issuer = State<(DevIssuer, SocketAddr)>;

async fn jwks(State((issuer, _)): Issuer) -> Json<Value> {
    Json(json!({ "keys": [issuer.key.jwk] }))
}

async fn discovery(State((issuer, addr)): Issuer) -> Json<Value> {
    Json(json!({
        "issuer": issuer.issuer,
        "jwks_uri": format!("http://{addr}/jwks.json"),
        "token_endpoint": format!("http://{addr}/token"),
        "grant_types_supported": ["client_credentials"],
        "id_token_signing_alg_values_supported": ["ES256"],
    }))
}

/// The client-credentials grant, with the client's id and secret in the form (RFC 6749 §2.3.1).
async fn token(
    State((issuer, _)): Issuer,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if field("grant_type") != "client_credentials" {
        return Err((StatusCode::BAD_REQUEST, Json(json!({ "error": "unsupported_grant_type" }))));
    }
    let Some(client) = issuer.authenticate(field("client_id"), field("client_secret")) else {
        return Err((StatusCode::UNAUTHORIZED, Json(json!({ "error": "invalid_client" }))));
    };
    // Asked-for scopes are granted only among the client's own; none asked: all of them.
    let asked: Vec<&str> = field("scope").split(' ').filter(|scope| !scope.is_empty()).collect();
    let granted: Vec<&str> =
        client.scopes.iter().map(String::as_str).filter(|scope| asked.is_empty() || asked.contains(scope)).collect();
    let roles: Vec<&str> = client.roles.iter().map(String::as_str).collect();
    let token = issuer.sign(&client.id, &roles, &granted.join(" "));
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME.as_secs(),
        "scope": granted.join(" "),
    })))
}

/// Unpadded base64url (RFC 4648 §5), as JWKs write key coordinates.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let group =
            chunk.iter().enumerate().fold(0u32, |group, (index, byte)| group | u32::from(*byte) << (16 - 8 * index));
        for index in 0..=chunk.len() {
            out.push(ALPHABET[(group >> (18 - 6 * index) & 0x3f) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64url;

    #[test]
    fn base64url_matches_rfc_4648_vectors() {
        let cases = [("", ""), ("f", "Zg"), ("fo", "Zm8"), ("foo", "Zm9v"), ("foob", "Zm9vYg"), ("fooba", "Zm9vYmE")];
        for (plain, encoded) in cases {
            assert_eq!(base64url(plain.as_bytes()), encoded);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }
}
