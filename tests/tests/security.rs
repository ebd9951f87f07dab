//! `[security]` with real cryptography: an issuer served by the test publishes ES256 keys generated
//! here, and a service checks bearer tokens against them. Forged, expired, misdirected and unsigned
//! tokens are refused with a 401 that says nothing of why; keys rotate; a flood of made-up key ids
//! fetches nothing more; the cached keys keep validating while the issuer is down.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use marty::axum::extract::State;
use marty::axum::http::StatusCode;
use marty::axum::routing::get;
use marty::axum::{Json, Router};
use marty::config::{ClientCredentialsConfig, Config};
use marty::security::Principal;
use marty::service::{RunningServer, Server};
use marty::{DependencyRegistry, Runtime};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A signing key of the issuer's.
struct SigningKey {
    kid: String,
    pkcs8: Vec<u8>,
    jwk: Value,
}

impl SigningKey {
    fn generate(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap().as_ref().to_vec();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng).unwrap();
        // An uncompressed point: 0x04, then x and y.
        let point = pair.public_key().as_ref();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        });
        SigningKey { kid: kid.to_owned(), pkcs8, jwk }
    }

    fn sign(&self, claims: &Value) -> String {
        let header = Header { kid: Some(self.kid.clone()), ..Header::new(Algorithm::ES256) };
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&self.pkcs8)).unwrap()
    }
}

/// The issuer's JWKS endpoint: the keys it publishes, how often it was asked, and whether it is up.
#[derive(Default)]
struct Issuer {
    keys: Mutex<Vec<Value>>,
    fetches: AtomicUsize,
    down: AtomicBool,
}

async fn jwks(State(issuer): State<Arc<Issuer>>) -> Result<Json<Value>, StatusCode> {
    issuer.fetches.fetch_add(1, Ordering::SeqCst);
    if issuer.down.load(Ordering::SeqCst) {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    Ok(Json(json!({ "keys": *issuer.keys.lock().unwrap() })))
}

async fn start_issuer(issuer: Arc<Issuer>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/certs", get(jwks)).with_state(issuer);
    tokio::spawn(async move { marty::axum::serve(listener, app).await.unwrap() });
    addr
}

const ISSUER: &str = "https://id.example.test/realms/shop";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims() -> Value {
    json!({
        "iss": ISSUER, "aud": "orders", "sub": "alice", "exp": now() + 300, "iat": now(),
        "realm_access": { "roles": ["clerk"] }, "scope": "orders:read orders:write", "tenant": "acme",
    })
}

/// `tests/security.marty.toml`, with the test issuer's address.
fn runtime(jwks: SocketAddr) -> Runtime {
    let text = include_str!("../security.marty.toml").replace("127.0.0.1:9", &jwks.to_string());
    Runtime::new(DependencyRegistry::from_config(Config::parse(&text, "security.marty.toml").unwrap()))
}

/// A service whose one route says who called it, secured by `[security]` against `jwks`.
async fn serve(jwks: SocketAddr) -> RunningServer {
    let runtime = runtime(jwks);
    #[derive(serde::Deserialize)]
    struct Tenant {
        tenant: String,
    }
    let whoami = |caller: Principal| async move {
        let tenant = caller.claims::<Tenant>().unwrap().tenant;
        Json(
            json!({ "subject": caller.subject(), "roles": caller.roles(), "scopes": caller.scopes(), "tenant": tenant }),
        )
    };
    let server = Server::new(Router::new().route("/whoami", get(whoami)), &runtime).unwrap();
    server.start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap()
}

struct Answer {
    status: u16,
    head: String,
    body: String,
}

async fn call(addr: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    send(addr, "GET", path, token).await
}

async fn send(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Answer {
    let authorization = token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    send_with(addr, method, path, &authorization).await
}

/// A request with `headers` (each line ending in `\r\n`).
async fn send_with(addr: SocketAddr, method: &str, path: &str, headers: &str) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Answer { status, head: head.to_ascii_lowercase(), body: body.to_owned() }
}

fn assert_refused(answer: &Answer, challenge: &str) {
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert!(answer.head.contains(&format!("www-authenticate: {challenge}")), "{}", answer.head);
    assert!(answer.head.contains("content-type: application/problem+json"), "{}", answer.head);
    for secret in ["signature", "expired", "audience", "issuer", "kid", "algorithm"] {
        assert!(!answer.body.to_lowercase().contains(secret), "the answer says why: {}", answer.body);
    }
}

#[tokio::test]
async fn bearer_tokens_are_checked_against_the_issuers_keys() {
    let issuer = Arc::new(Issuer::default());
    let key = SigningKey::generate("2026-12");
    issuer.keys.lock().unwrap().push(key.jwk.clone());
    let service = serve(start_issuer(issuer.clone()).await).await;
    let addr = service.addr();

    let answer = call(addr, "/whoami", Some(&key.sign(&claims()))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let caller: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(caller["subject"], "alice");
    assert_eq!(caller["roles"], json!(["clerk"]));
    assert_eq!(caller["scopes"], json!(["orders:read", "orders:write"]));
    assert_eq!(caller["tenant"], "acme");

    assert_refused(&call(addr, "/whoami", None).await, "bearer\r");
    // Every answer carries the usual security headers, refusals included.
    for head in [&answer.head, &call(addr, "/whoami", None).await.head] {
        for header in ["x-content-type-options: nosniff", "x-frame-options: deny", "referrer-policy: no-referrer"] {
            assert!(head.contains(header), "{header} missing: {head}");
        }
        assert!(head.contains("content-security-policy: default-src 'none'"), "{head}");
    }
    // Probes and scrapers need no token.
    assert_eq!(call(addr, "/healthz", None).await.status, 200);
    assert_eq!(call(addr, "/metrics", None).await.status, 200);

    let invalid = "bearer error=\"invalid_token\"";
    // Signed by a key the issuer does not publish, under the published key's id.
    let forger = SigningKey { kid: key.kid.clone(), ..SigningKey::generate("forged") };
    assert_refused(&call(addr, "/whoami", Some(&forger.sign(&claims()))).await, invalid);
    // Expired (beyond the leeway), for another audience, from another issuer, without a subject.
    let mut expired = claims();
    expired["exp"] = json!(now() - 120);
    assert_refused(&call(addr, "/whoami", Some(&key.sign(&expired))).await, invalid);
    let mut elsewhere = claims();
    elsewhere["aud"] = json!("payments");
    assert_refused(&call(addr, "/whoami", Some(&key.sign(&elsewhere))).await, invalid);
    let mut impostor = claims();
    impostor["iss"] = json!("https://evil.example.test");
    assert_refused(&call(addr, "/whoami", Some(&key.sign(&impostor))).await, invalid);
    let mut nobody = claims();
    nobody.as_object_mut().unwrap().remove("sub");
    assert_refused(&call(addr, "/whoami", Some(&key.sign(&nobody))).await, invalid);
    // Unsigned (`alg: none`), and HMAC with the public key as the secret (algorithm confusion).
    let encode = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
    let unsigned = format!("{}.{}.", encode(&json!({"alg": "none", "kid": key.kid})), encode(&claims()));
    assert_refused(&call(addr, "/whoami", Some(&unsigned)).await, invalid);
    let public_key = key.jwk.to_string();
    let confused = jsonwebtoken::encode(
        &Header { kid: Some(key.kid.clone()), ..Header::new(Algorithm::HS256) },
        &claims(),
        &EncodingKey::from_secret(public_key.as_bytes()),
    )
    .unwrap();
    assert_refused(&call(addr, "/whoami", Some(&confused)).await, invalid);
    assert_refused(&call(addr, "/whoami", Some("not.a.jwt")).await, invalid);
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn keys_rotate_and_a_flood_of_made_up_key_ids_fetches_nothing_more() {
    let issuer = Arc::new(Issuer::default());
    let old = SigningKey::generate("old");
    issuer.keys.lock().unwrap().push(old.jwk.clone());
    let service = serve(start_issuer(issuer.clone()).await).await;
    let addr = service.addr();
    assert_eq!(call(addr, "/whoami", Some(&old.sign(&claims()))).await.status, 200);

    // The issuer rotates: a token under the new key makes the service fetch the keys once more.
    let new = SigningKey::generate("new");
    issuer.keys.lock().unwrap().push(new.jwk.clone());
    let fetched = issuer.fetches.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(11)).await; // past the 10 s between fetches
    assert_eq!(call(addr, "/whoami", Some(&new.sign(&claims()))).await.status, 200);
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), fetched + 1, "one fetch for the new key");

    // Made-up key ids, a hundred at once: at most one more fetch, however many there are.
    let fetched = issuer.fetches.load(Ordering::SeqCst);
    let mut floods = tokio::task::JoinSet::new();
    for index in 0..100 {
        let forged = SigningKey::generate(&format!("made-up-{index}"));
        floods.spawn(async move { call(addr, "/whoami", Some(&forged.sign(&claims()))).await.status });
    }
    let statuses = floods.join_all().await;
    assert!(statuses.iter().all(|status| *status == 401), "{statuses:?}");
    assert!(
        issuer.fetches.load(Ordering::SeqCst) <= fetched + 1,
        "a flood of unknown kids fetched the keys again and again"
    );

    // The issuer goes down: the keys cached keep validating.
    issuer.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(11)).await;
    let unknown = SigningKey::generate("unknown");
    assert_eq!(call(addr, "/whoami", Some(&unknown.sign(&claims()))).await.status, 401);
    assert_eq!(call(addr, "/whoami", Some(&old.sign(&claims()))).await.status, 200);
    assert_eq!(call(addr, "/whoami", Some(&new.sign(&claims()))).await.status, 200);
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn before_the_keys_were_ever_fetched_a_token_gets_503_not_401() {
    let issuer = Arc::new(Issuer::default());
    issuer.down.store(true, Ordering::SeqCst);
    let key = SigningKey::generate("k");
    issuer.keys.lock().unwrap().push(key.jwk.clone());
    let service = serve(start_issuer(issuer.clone()).await).await;
    let answer = call(service.addr(), "/whoami", Some(&key.sign(&claims()))).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(answer.head.contains("retry-after"), "{}", answer.head);
    service.shutdown().await.unwrap();
}

/// A shop whose routes say what they require, checked against `tests/security.marty.toml`.
struct Shop;

#[marty::service(config = "security.marty.toml")]
impl Shop {
    #[marty::get("/catalog")]
    #[marty::public]
    async fn catalog(&self, caller: Option<Principal>) -> String {
        caller.map_or_else(|| "anyone".to_owned(), |caller| caller.subject().to_owned())
    }

    /// No attribute: `[security] default` (authenticated).
    #[marty::get("/orders")]
    async fn orders(&self, caller: Principal) -> String {
        format!("orders of {}", caller.subject())
    }

    #[marty::post("/orders")]
    #[marty::authorize(roles = ["clerk", "admin"], scopes = ["orders:write"])]
    async fn place(&self) -> StatusCode {
        StatusCode::CREATED
    }

    #[marty::delete("/orders/{id}")]
    #[marty::authorize(roles = ["admin"])]
    #[marty::audit]
    async fn cancel(&self, marty::axum::extract::Path(id): marty::axum::extract::Path<u64>) -> String {
        format!("cancelled {id}")
    }
}

fn token_of(key: &SigningKey, subject: &str, roles: &[&str], scope: &str) -> String {
    let mut claims = claims();
    claims["sub"] = json!(subject);
    claims["realm_access"] = json!({ "roles": roles });
    claims["scope"] = json!(scope);
    key.sign(&claims)
}

#[tokio::test]
async fn routes_admit_any_of_their_roles_and_all_of_their_scopes() {
    let issuer = Arc::new(Issuer::default());
    let key = SigningKey::generate("shop");
    issuer.keys.lock().unwrap().push(key.jwk.clone());
    let runtime = runtime(start_issuer(issuer).await);
    let server = marty::service::server_in(&runtime, Shop).expect("the routes' names are declared");
    let service = server.start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
    let addr = service.addr();
    let reader = token_of(&key, "rita", &["clerk"], "orders:read");
    let clerk = token_of(&key, "carl", &["clerk"], "orders:read orders:write");
    let admin = token_of(&key, "ada", &["admin"], "");

    let public = call(addr, "/catalog", None).await;
    assert_eq!((public.status, public.body.as_str()), (200, "anyone"));
    assert_eq!(call(addr, "/catalog", Some(&clerk)).await.body, "carl", "a public route still sees its caller");
    assert_refused(&call(addr, "/orders", None).await, "bearer\r");
    assert_eq!(call(addr, "/orders", Some(&reader)).await.body, "orders of rita");

    let forbidden = send(addr, "POST", "/orders", Some(&reader)).await;
    assert_eq!(forbidden.status, 403, "a clerk without `orders:write`: {}", forbidden.body);
    assert!(
        forbidden.head.contains("application/problem+json") && forbidden.body.contains("urn:marty:problem:forbidden")
    );
    assert_eq!(send(addr, "POST", "/orders", Some(&clerk)).await.status, 201);
    assert_eq!(send(addr, "POST", "/orders", Some(&admin)).await.status, 403, "an admin without the scope");
    assert_refused(&send(addr, "POST", "/orders", None).await, "bearer\r");

    assert_eq!(send(addr, "DELETE", "/orders/7", Some(&clerk)).await.status, 403);
    let cancelled = send(addr, "DELETE", "/orders/7", Some(&admin)).await;
    assert_eq!((cancelled.status, cancelled.body.as_str()), (200, "cancelled 7"));
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_configuration_in_force_that_lost_a_routes_role_stops_startup() {
    let text = include_str!("../security.marty.toml").replace("roles = [\"clerk\", \"admin\"]", "roles = [\"clerk\"]");
    let runtime = Runtime::new(DependencyRegistry::from_config(Config::parse(&text, "security.marty.toml").unwrap()));
    let error = marty::service::server_in(&runtime, Shop).unwrap_err().to_string();
    assert!(error.contains("security.roles") && error.contains("`DELETE /orders/{id}` requires `admin`"), "{error}");
}

/// The shop on `tests/security.marty.toml` with `extra` settings added.
fn shop_with(jwks: SocketAddr, extra: &str) -> Result<marty::service::Server, marty::service::ServeError> {
    let text = format!("{}\n{extra}", include_str!("../security.marty.toml").replace("127.0.0.1:9", &jwks.to_string()));
    let runtime = Runtime::new(DependencyRegistry::from_config(Config::parse(&text, "security.marty.toml").unwrap()));
    marty::service::server_in(&runtime, Shop)
}

/// The shop with API keys from `keys` (a file written for the test).
fn runtime_with_api_keys(jwks: SocketAddr, keys: &str) -> Result<marty::service::Server, marty::service::ServeError> {
    let path = std::env::temp_dir().join(format!("marty-api-keys-{}-{}.toml", std::process::id(), fastrand::u64(..)));
    std::fs::write(&path, keys).unwrap();
    let server = shop_with(jwks, &format!("[security.api_keys]\nfile = \"{}\"\n", path.display()));
    std::fs::remove_file(&path).unwrap();
    server
}

fn sha256_hex(key: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, key.as_bytes())
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[tokio::test]
async fn machine_clients_authenticate_with_api_keys_known_only_by_their_hash() {
    let issuer = Arc::new(Issuer::default());
    let key = SigningKey::generate("shop");
    issuer.keys.lock().unwrap().push(key.jwk.clone());
    let jwks = start_issuer(issuer).await;
    let secret = "mk_live_7f3c9a1e5b2d4c6f8a0b";
    let keys = format!(
        "[keys.batch]\nsha256 = \"{}\"\nroles = [\"clerk\"]\nscopes = [\"orders:write\"]\n",
        sha256_hex(secret)
    );
    let server = runtime_with_api_keys(jwks, &keys).expect("the keys file is valid");
    let service = server.start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
    let addr = service.addr();

    let with_key = |key: &str| format!("x-api-key: {key}\r\n");
    assert_eq!(send_with(addr, "GET", "/orders", &with_key(secret)).await.body, "orders of api-key:batch");
    assert_eq!(send_with(addr, "POST", "/orders", &with_key(secret)).await.status, 201);
    assert_eq!(send_with(addr, "DELETE", "/orders/7", &with_key(secret)).await.status, 403, "the key grants no admin");
    let unknown = send_with(addr, "POST", "/orders", &with_key("mk_live_7f3c9a1e5b2d4c6f8a0c")).await;
    assert_eq!(unknown.status, 401, "{}", unknown.body);
    let hash_as_key = send_with(addr, "POST", "/orders", &with_key(&sha256_hex(secret))).await;
    assert_eq!(hash_as_key.status, 401, "the stored hash is not a key");
    let token = token_of(&key, "carl", &["clerk"], "orders:write");
    let both = format!("{}Authorization: Bearer {token}\r\n", with_key(secret));
    assert_eq!(send_with(addr, "POST", "/orders", &both).await.status, 401, "two credentials at once");
    service.shutdown().await.unwrap();

    // A key file that grants an undeclared role stops startup, naming the file, line and key.
    let keys = format!("[keys.batch]\nsha256 = \"{}\"\nroles = [\"root\"]\n", sha256_hex(secret));
    let error = runtime_with_api_keys(jwks, &keys).unwrap_err().to_string();
    assert!(
        error.contains(".toml:3") && error.contains("keys.batch.roles") && error.contains("`root` is not declared"),
        "{error}"
    );
    assert!(!error.contains(secret), "{error}");
}

#[tokio::test]
async fn browser_pages_of_allowed_origins_pass_cors_before_authentication() {
    let jwks = start_issuer(Arc::new(Issuer::default())).await;
    let cors = "[security.cors]\nallowed_origins = [\"https://shop.example.com\"]\n";
    let server = shop_with(jwks, cors).expect("valid");
    let service = server.start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
    let addr = service.addr();
    let preflight = |origin: &str| {
        format!("Origin: {origin}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization\r\n")
    };
    let allowed = send_with(addr, "OPTIONS", "/orders", &preflight("https://shop.example.com")).await;
    assert_eq!(allowed.status, 200, "a preflight needs no credentials: {}", allowed.body);
    assert!(allowed.head.contains("access-control-allow-origin: https://shop.example.com"), "{}", allowed.head);
    assert!(allowed.head.contains("access-control-allow-headers: authorization"), "{}", allowed.head);
    let elsewhere = send_with(addr, "OPTIONS", "/orders", &preflight("https://evil.example.com")).await;
    assert!(!elsewhere.head.contains("access-control-allow-origin"), "{}", elsewhere.head);
    // A refusal is readable by the page (so it can sign in), and says which headers it may read.
    let refused = send_with(addr, "GET", "/orders", "Origin: https://shop.example.com\r\n").await;
    assert_eq!(refused.status, 401);
    assert!(refused.head.contains("access-control-allow-origin: https://shop.example.com"), "{}", refused.head);
    assert!(refused.head.contains("access-control-expose-headers: x-request-id,retry-after"), "{}", refused.head);
    service.shutdown().await.unwrap();
}

/// The value of header `name` (lower case) in an answer's head.
fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
    answer.head.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
}

const RATE_LIMITS: &str = "[rate_limit]\ndefault = { limit = \"100/s\" }\ntrusted_proxies = [\"127.0.0.1\"]\n\
    [rate_limit.routes]\n\"GET /catalog\" = { limit = \"3/m\", key = \"ip\" }\n\"POST /orders\" = { limit = \"2/m\" }\n";

#[tokio::test]
async fn callers_over_their_rate_limit_get_429_with_when_to_retry() {
    let issuer = Arc::new(Issuer::default());
    let key = SigningKey::generate("shop");
    issuer.keys.lock().unwrap().push(key.jwk.clone());
    let server = shop_with(start_issuer(issuer).await, RATE_LIMITS).expect("the limited routes exist");
    let service = server.start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
    let addr = service.addr();

    // By address: three a minute, then 429 problem+json saying when to come back.
    for remaining in [2, 1, 0] {
        let answer = call(addr, "/catalog", None).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(header(&answer, "ratelimit-policy"), Some("\"get /catalog\";q=3;w=60"), "lower-cased head");
        let state = header(&answer, "ratelimit").unwrap();
        assert!(state.starts_with(&format!("\"get /catalog\";r={remaining};t=")), "{state}");
    }
    let over = call(addr, "/catalog", None).await;
    assert_eq!(over.status, 429, "{}", over.body);
    assert!(over.head.contains("content-type: application/problem+json"), "{}", over.head);
    assert!(over.body.contains("urn:marty:problem:too-many-requests"), "{}", over.body);
    let retry_after: u64 = header(&over, "retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry_after), "one request's share of a minute: {retry_after}");
    assert!(header(&over, "ratelimit").unwrap().contains(";r=0;"), "{}", over.head);
    // Behind a trusted proxy, the client it names has an allowance of its own; what an untrusted
    // hop claims about the ones before it (a forged leftmost address) changes nothing.
    let forwarded = |chain: &str| format!("X-Forwarded-For: {chain}\r\n");
    assert_eq!(send_with(addr, "GET", "/catalog", &forwarded("203.0.113.9")).await.status, 200);
    for forged in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        let _ = send_with(addr, "GET", "/catalog", &forwarded(&format!("{forged}, 203.0.113.9"))).await;
    }
    assert_eq!(send_with(addr, "GET", "/catalog", &forwarded("203.0.113.9")).await.status, 429);
    // Probes are never limited.
    assert_eq!(call(addr, "/healthz", None).await.status, 200);

    // By caller: each subject has its own allowance, whatever its address.
    let carl = token_of(&key, "carl", &["clerk"], "orders:write");
    let cora = token_of(&key, "cora", &["clerk"], "orders:write");
    assert_eq!(send(addr, "POST", "/orders", Some(&carl)).await.status, 201);
    assert_eq!(send(addr, "POST", "/orders", Some(&carl)).await.status, 201);
    assert_eq!(send(addr, "POST", "/orders", Some(&carl)).await.status, 429);
    assert_eq!(send(addr, "POST", "/orders", Some(&cora)).await.status, 201, "another caller");
    // Failed credentials count against the address: guessing is limited too.
    let statuses: Vec<u16> = refused_statuses(addr, 3).await;
    assert_eq!(statuses, [401, 401, 429]);
    // Routes without a limit of their own get the default.
    let listed = call(addr, "/orders", Some(&cora)).await;
    assert_eq!(header(&listed, "ratelimit-policy"), Some("\"default\";q=100;w=1"), "{}", listed.head);
    service.shutdown().await.unwrap();
}

/// `count` requests to `POST /orders` with a token that is not valid, one after the other.
async fn refused_statuses(addr: SocketAddr, count: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..count {
        statuses.push(send(addr, "POST", "/orders", Some("not-a-token")).await.status);
    }
    statuses
}

#[tokio::test]
async fn a_rate_limit_for_a_route_the_service_does_not_have_stops_startup() {
    let jwks = start_issuer(Arc::new(Issuer::default())).await;
    let error =
        shop_with(jwks, "[rate_limit.routes]\n\"POST /order\" = { limit = \"1/s\" }\n").unwrap_err().to_string();
    assert!(
        error.contains("rate_limit.routes.\"POST /order\"") && error.contains("did you mean `POST /orders`"),
        "{error}"
    );
}

/// The `marty::audit` events written while it is the thread's subscriber, as `field=value` lines.
#[derive(Clone, Default)]
struct AuditTrail(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AuditTrail {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={:?} ", field.name(), value));
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                self.0.push_str(&format!("{}={value} ", field.name()));
            }
        }
        if event.metadata().target() == "marty::audit" {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.0);
        }
    }
}

#[tokio::test]
async fn refusals_and_audited_routes_are_written_to_the_audit_trail() {
    use tracing_subscriber::layer::SubscriberExt;
    let trail = AuditTrail::default();
    // A current-thread runtime: the server's tasks run on this thread, under this subscriber.
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry().with(trail.clone()));
    let issuer = Arc::new(Issuer::default());
    let key = SigningKey::generate("shop");
    issuer.keys.lock().unwrap().push(key.jwk.clone());
    let runtime = runtime(start_issuer(issuer).await);
    let server = marty::service::server_in(&runtime, Shop).unwrap();
    let service = server.start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
    let addr = service.addr();
    let (clerk, admin) = (token_of(&key, "carl", &["clerk"], ""), token_of(&key, "ada", &["admin"], ""));

    let request_id = "X-Request-Id: audit-1\r\n";
    let with = |token: &str| format!("{request_id}Authorization: Bearer {token}\r\n");
    assert_eq!(send_with(addr, "DELETE", "/orders/7", &with(&clerk)).await.status, 403);
    assert_eq!(send_with(addr, "DELETE", "/orders/7", &with(&admin)).await.status, 200);
    assert_eq!(send(addr, "GET", "/orders", Some("forged")).await.status, 401);
    assert_eq!(send(addr, "GET", "/orders", Some(&clerk)).await.status, 200, "not audited when allowed");
    service.shutdown().await.unwrap();

    let records = trail.0.lock().unwrap().clone();
    assert_eq!(records.len(), 3, "{records:#?}");
    let forbidden = &records[0];
    for field in
        ["who=carl", "what=DELETE /orders/{id}", "decision=denied", "reason=a required role or scope is missing"]
    {
        assert!(forbidden.contains(field), "{field} missing: {forbidden}");
    }
    assert!(forbidden.contains("time=20") && forbidden.contains("request_id=audit-1"), "{forbidden}");
    assert!(records[1].contains("who=ada") && records[1].contains("decision=allowed"), "{}", records[1]);
    let invalid = &records[2];
    assert!(invalid.contains("who=anonymous") && invalid.contains("reason=credentials not valid"), "{invalid}");
    assert!(!records.concat().contains(&clerk), "a token in the audit trail");
}

/// An issuer's token endpoint for the client-credentials grant: the client `orders` with secret
/// `s3cret` gets a clerk's token signed with `key`, living `lifetime` seconds.
struct TokenEndpoint {
    key: SigningKey,
    lifetime: u64,
    issued: AtomicUsize,
}

async fn token(
    State(endpoint): State<Arc<TokenEndpoint>>,
    form: String,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let field =
        |name: &str| form.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')).map(form_decoded);
    let client = (field("grant_type"), field("client_id"), field("client_secret"));
    if client != (Some("client_credentials".into()), Some("orders".into()), Some("s3cret".into())) {
        return Err((StatusCode::UNAUTHORIZED, Json(json!({ "error": "invalid_client" }))));
    }
    endpoint.issued.fetch_add(1, Ordering::SeqCst);
    let mut claims = claims();
    claims["sub"] = json!("service-orders");
    claims["scope"] = json!(field("scope").unwrap_or_default());
    claims["exp"] = json!(now() + endpoint.lifetime);
    let token = endpoint.key.sign(&claims);
    Ok(Json(json!({ "access_token": token, "token_type": "Bearer", "expires_in": endpoint.lifetime })))
}

/// A form value as sent (`+` for spaces, `%XX` escapes).
fn form_decoded(value: &str) -> String {
    let bytes = value.replace('+', " ").into_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%').then(|| std::str::from_utf8(bytes.get(index + 1..index + 3)?).ok());
        match escaped.flatten().and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
            Some(byte) => {
                decoded.push(byte);
                index += 3;
            }
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// `[security.clients.shop]` against the endpoint at `addr`, its secret from the environment.
fn token_source(addr: SocketAddr, secret: &str) -> marty::security::TokenSource {
    let text = format!(
        "[security]\ndefault = \"public\"\n[security.clients.shop]\ntoken_url = \"http://{addr}/token\"\n\
         client_id = \"orders\"\nclient_secret = \"${{SHOP_SECRET}}\"\nscopes = [\"orders:write\"]\n"
    );
    let env = marty::config::Environment::from_pairs([("SHOP_SECRET", secret)]);
    let config = Config::parse_at_startup(&text, "marty.toml", &env).unwrap();
    marty::security::TokenSource::new(config.security.unwrap().clients[0].clone())
}

#[tokio::test]
async fn a_client_credentials_token_is_cached_refreshed_before_it_expires_and_accepted() {
    let issuer = Arc::new(Issuer::default());
    let key = SigningKey::generate("shop");
    issuer.keys.lock().unwrap().push(key.jwk.clone());
    let runtime = runtime(start_issuer(issuer).await);
    let service = marty::service::server_in(&runtime, Shop).unwrap();
    let service = service.start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
    let lifetime = 4;
    let endpoint = Arc::new(TokenEndpoint { key, lifetime, issued: AtomicUsize::new(0) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_addr = listener.local_addr().unwrap();
    let app = Router::new().route("/token", marty::axum::routing::post(token)).with_state(endpoint.clone());
    tokio::spawn(async move { marty::axum::serve(listener, app).await.unwrap() });

    let source = token_source(token_addr, "s3cret");
    let fetched_at = std::time::Instant::now();
    let first = source.authorization().await.unwrap();
    assert_eq!(source.authorization().await.unwrap(), first, "cached");
    assert_eq!(endpoint.issued.load(Ordering::SeqCst), 1);
    // The secured service takes it: a clerk's token with the scope asked for.
    let bearer = first.to_str().unwrap().strip_prefix("Bearer ").unwrap().to_owned();
    assert_eq!(send(service.addr(), "POST", "/orders", Some(&bearer)).await.status, 201);

    // Past 80% of its life the token is still served, and the next one fetched in the background.
    tokio::time::sleep_until((fetched_at + Duration::from_millis(lifetime * 1000 * 85 / 100)).into()).await;
    assert_eq!(source.authorization().await.unwrap(), first, "the valid token is served while refreshing");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while endpoint.issued.load(Ordering::SeqCst) < 2 {
        assert!(std::time::Instant::now() < deadline, "never refreshed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(source.authorization().await.unwrap(), first, "the new token is served once fetched");

    // A wrong secret: the issuer's error code, never the secret.
    let error = token_source(token_addr, "wrong-secret").authorization().await.unwrap_err().to_string();
    assert!(error.contains("401") && error.contains("invalid_client") && !error.contains("wrong-secret"), "{error}");
    service.shutdown().await.unwrap();
}

/// Marty's development issuer, as the store demo uses it: the keys it publishes check the tokens it
/// mints and grants, with the roles it gives its clients; a wrong secret is `invalid_client`; it
/// refuses to serve anywhere but on loopback.
#[tokio::test]
async fn the_development_issuer_grants_tokens_a_service_accepts_and_serves_only_on_loopback() {
    use marty::security::DevIssuer;
    let issuer = DevIssuer::new(ISSUER, "orders").client("till", "s3cret", &["clerk"], &["orders:write"]);
    let issuer_addr = issuer.serve(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
    // tests/security.marty.toml, with the issuer's key set and Marty's default roles claim, `roles`.
    let text = include_str!("../security.marty.toml")
        .replace("http://127.0.0.1:9/certs", &format!("http://{issuer_addr}/jwks.json"))
        .replace("roles_claim = \"realm_access.roles\"\n", "");
    let runtime = Runtime::new(DependencyRegistry::from_config(Config::parse(&text, "security.marty.toml").unwrap()));
    let service = marty::service::server_in(&runtime, Shop).unwrap();
    let service = service.start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
    let token_url = format!("http://{issuer_addr}/token");

    let till = marty::security::TokenSource::new(ClientCredentialsConfig::new("till", &token_url, "till", "s3cret"));
    let granted = till.authorization().await.unwrap();
    let bearer = granted.to_str().unwrap().strip_prefix("Bearer ").unwrap().to_owned();
    assert_eq!(send(service.addr(), "POST", "/orders", Some(&bearer)).await.status, 201, "a clerk with orders:write");
    let admin_without_scope = issuer.token("alice", &["admin"], &[]);
    assert_eq!(send(service.addr(), "POST", "/orders", Some(&admin_without_scope)).await.status, 403);
    assert_eq!(call(service.addr(), "/orders", Some(&admin_without_scope)).await.status, 200);

    let wrong = marty::security::TokenSource::new(ClientCredentialsConfig::new("till", &token_url, "till", "guess"));
    let error = wrong.authorization().await.unwrap_err().to_string();
    assert!(error.contains("invalid_client") && !error.contains("guess"), "{error}");

    let everywhere = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let refused = issuer.serve(everywhere).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput, "{refused}");
    service.shutdown().await.unwrap();
}

/// A tonic interceptor cannot wait for a token: without one it fails the call as `UNAVAILABLE`
/// (which retry policies retry) and fetches one in the background, which the next calls carry.
#[tokio::test]
async fn the_grpc_interceptor_fetches_a_token_in_the_background_when_it_has_none() {
    use marty::tonic::service::Interceptor;
    let issuer = marty::security::DevIssuer::new(ISSUER, "orders").client("till", "s3cret", &["clerk"], &[]);
    let issuer_addr = issuer.serve(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
    let token_url = format!("http://{issuer_addr}/token");
    let source = marty::security::TokenSource::new(ClientCredentialsConfig::new("till", &token_url, "till", "s3cret"));
    let mut interceptor = source.interceptor();
    let first = interceptor.call(marty::tonic::Request::new(())).unwrap_err();
    assert_eq!(first.code(), marty::tonic::Code::Unavailable, "{first:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let request = loop {
        if let Ok(request) = interceptor.call(marty::tonic::Request::new(())) {
            break request;
        }
        assert!(std::time::Instant::now() < deadline, "no token was fetched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let authorization = request.metadata().get("authorization").unwrap().to_str().unwrap().to_owned();
    assert_eq!(authorization, source.authorization().await.unwrap().to_str().unwrap(), "the cached token");
}

/// An issuer that is down is not asked again by every call: a failed fetch is answered from memory
/// for a second, to waiting callers and to the interceptor alike, then tried again.
#[tokio::test]
async fn a_token_endpoint_that_fails_is_asked_again_after_a_second_not_by_every_call() {
    use marty::tonic::service::Interceptor;
    let attempts = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/token",
            marty::axum::routing::post(|State(attempts): State<Arc<AtomicUsize>>| async move {
                attempts.fetch_add(1, Ordering::SeqCst);
                (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": "temporarily_unavailable" })))
            }),
        )
        .with_state(attempts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { marty::axum::serve(listener, app).await.unwrap() });
    let source = marty::security::TokenSource::new(ClientCredentialsConfig::new("till", &token_url, "till", "s3cret"));

    let failed_at = std::time::Instant::now();
    for _ in 0..20 {
        let error = source.authorization().await.unwrap_err().to_string();
        assert!(error.contains("503") && error.contains("temporarily_unavailable"), "{error}");
    }
    let mut interceptor = source.interceptor();
    for _ in 0..20 {
        let status = interceptor.call(marty::tonic::Request::new(())).unwrap_err();
        assert_eq!(status.code(), marty::tonic::Code::Unavailable, "{status:?}");
    }
    tokio::time::sleep(Duration::from_millis(50)).await; // a background fetch, had one started
    assert!(failed_at.elapsed() < Duration::from_secs(1), "the checks above took a second: the test proves nothing");
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "one fetch for forty calls within the second");

    tokio::time::sleep_until((failed_at + Duration::from_millis(1100)).into()).await;
    assert!(source.authorization().await.is_err());
    assert_eq!(attempts.load(Ordering::SeqCst), 2, "asked again once the second had passed");
}
