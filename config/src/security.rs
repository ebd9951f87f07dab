//! `[security]`: who may call the service, and how callers prove who they are.

use std::time::Duration;

use crate::read::{join, Reader, Table};

/// `[security]`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SecurityConfig {
    /// What a route without `#[public]` or `#[authorize]` requires.
    pub default: Access,
    /// The roles the service's attributes may name.
    pub roles: Vec<String>,
    /// The scopes the service's attributes may name.
    pub scopes: Vec<String>,
    /// `[security.jwt]`: bearer tokens from an OpenID Connect or OAuth2 issuer.
    pub jwt: Option<JwtConfig>,
    /// `[security.api_keys]`: keys for machine clients, in a header.
    pub api_keys: Option<ApiKeysConfig>,
    /// `[security.cors]`: which browser origins may call the service.
    pub cors: Option<CorsConfig>,
    /// `[security.grpc]`: what gRPC methods require beyond `default`.
    pub grpc: Vec<GrpcMethodAccess>,
    /// `[security.mtls]`: client certificates (`[http.tls] client_ca`) as callers' identities.
    pub mtls: Option<MtlsConfig>,
    /// `[security.clients.<name>]`: how this service gets tokens to call other secured services.
    pub clients: Vec<ClientCredentialsConfig>,
}

/// `[security.clients.<name>]`: an OAuth2 client-credentials grant at the issuer's token endpoint.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct ClientCredentialsConfig {
    /// The name the code asks for it by (`marty::security::TokenSource::named("payments")`).
    pub name: String,
    /// The issuer's token endpoint (HTTPS unless on this machine).
    pub token_url: String,
    /// This service's client id.
    pub client_id: String,
    /// Its secret: `${VARIABLE}` from the environment (a literal is refused).
    pub client_secret: String,
    /// The scopes asked for (none: the client's defaults).
    pub scopes: Vec<String>,
    /// The `audience` parameter some issuers need (Auth0, Keycloak's token exchange).
    pub audience: Option<String>,
}

impl ClientCredentialsConfig {
    /// A grant made in code rather than read from `[security.clients.<name>]` (a load generator, a
    /// command-line tool): the same fields, without the file's checks on where the secret comes from.
    pub fn new(name: &str, token_url: &str, client_id: &str, client_secret: &str) -> Self {
        ClientCredentialsConfig {
            name: name.to_owned(),
            token_url: token_url.to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            scopes: Vec::new(),
            audience: None,
        }
    }
}

impl std::fmt::Debug for ClientCredentialsConfig {
    /// Without the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentialsConfig")
            .field("name", &self.name)
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// `[security.mtls]`: a client certificate proves its first URI subject alternative name (a SPIFFE
/// id) or, without one, its first DNS name; `identities` grants each its roles and scopes.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MtlsConfig {
    /// By identity (`"spiffe://shop.example/ns/prod/sa/orders"`): its roles and scopes.
    pub identities: Vec<(String, Vec<String>, Vec<String>)>,
    /// Where the table is, for errors.
    pub origin: crate::Origin,
}

/// What one gRPC method requires of its caller (`"store.Payments/Charge" = { roles = [..] }`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct GrpcMethodAccess {
    /// The full method name: `package.Service/Method`.
    pub method: String,
    /// Where it is named, for errors.
    pub origin: crate::Origin,
    /// `None`: anyone (`"public"`); else any of `roles` (none: no role needed) and all of `scopes`.
    pub authorize: Option<(Vec<String>, Vec<String>)>,
}

impl GrpcMethodAccess {
    /// The service part: `package.Service`.
    pub fn service(&self) -> &str {
        self.method.split_once('/').map_or(&self.method, |(service, _)| service)
    }
}

/// `[security.cors]`: cross-origin requests from browsers, answered before authentication (a
/// preflight carries no credentials).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CorsConfig {
    /// Origins allowed (`https://shop.example.com`), or `["*"]` for any.
    pub allowed_origins: Vec<String>,
    /// Methods allowed (default `GET`, `POST`, `PUT`, `PATCH`, `DELETE`).
    pub allowed_methods: Vec<String>,
    /// Request headers allowed (default `authorization`, `content-type`, `x-request-id`).
    pub allowed_headers: Vec<String>,
    /// Response headers a page may read (default `x-request-id`, `retry-after`).
    pub expose_headers: Vec<String>,
    /// Whether cookies and `Authorization` may be sent (default `false`; not with `*`).
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight's answer (default `10m`).
    pub max_age: Duration,
}

impl SecurityConfig {
    /// Whether any way for a caller to authenticate is configured.
    pub fn can_authenticate(&self) -> bool {
        self.jwt.is_some() || self.api_keys.is_some() || self.mtls.is_some()
    }
}

/// `[security.api_keys]`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ApiKeysConfig {
    /// The request header carrying the key (default `x-api-key`).
    pub header: String,
    /// Where the keys file is (see [`crate::parse_api_keys`]).
    pub source: ApiKeysSource,
}

/// Where the API keys file is read from at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeysSource {
    /// A file (a mounted secret).
    File(String),
    /// An environment variable holding the file's text.
    Env(String),
}

/// What a route requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A caller who proved who they are (`"authenticated"`, the default).
    Authenticated,
    /// Anyone (`"public"`).
    Public,
}

/// `[security.jwt]`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct JwtConfig {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` values accepted: a token must name at least one.
    pub audiences: Vec<String>,
    /// The signature algorithms accepted (default `["RS256", "ES256"]`).
    pub algorithms: Vec<String>,
    /// Where the issuer's public keys are.
    pub keys: KeySource,
    /// How far `exp` and `nbf` may be off, for clocks that disagree (default `30s`).
    pub leeway: Duration,
    /// The claim holding the caller's roles, dotted for nested objects (default `roles`; Keycloak's
    /// is `realm_access.roles`).
    pub roles_claim: String,
    /// The claim holding the caller's scopes, a space-separated string or an array (default
    /// `scope`; `scp` is read when it is absent).
    pub scopes_claim: String,
    /// How often the keys are fetched again in the background (default `5m`).
    pub refresh: Duration,
}

/// Where an issuer publishes its public keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS document at this URL.
    Jwks(String),
    /// OpenID Connect discovery: `<issuer>/.well-known/openid-configuration` names the JWKS.
    Discovery(String),
}

/// Algorithms a token may be signed with: asymmetric only, so the service holds no secret.
pub const JWT_ALGORITHMS: &[&str] = &["RS256", "RS384", "PS256", "ES256", "ES384", "EdDSA"];

const SECURITY_KEYS: &[&str] = &["default", "roles", "scopes", "jwt", "api_keys", "cors", "grpc", "mtls", "clients"];
const JWT_KEYS: &[&str] = &[
    "issuer",
    "audiences",
    "algorithms",
    "jwks_url",
    "discovery_url",
    "leeway",
    "roles_claim",
    "scopes_claim",
    "refresh",
];

pub(crate) fn read_security(reader: &mut Reader<'_>, root: &Table<'_>) -> Option<SecurityConfig> {
    let table = reader.table(root, "security")?;
    reader.deny_unknown_keys(&table, SECURITY_KEYS);
    let default = match reader.choice(&table, "default", &["authenticated", "public"]).as_deref() {
        Some("public") => Access::Public,
        _ => Access::Authenticated,
    };
    let roles = reader.strings(&table, "roles", "[\"admin\", \"clerk\"]").unwrap_or_default();
    let scopes = reader.strings(&table, "scopes", "[\"orders:read\", \"orders:write\"]").unwrap_or_default();
    let jwt = reader.table(&table, "jwt").and_then(|jwt| read_jwt(reader, &jwt));
    let api_keys = reader.table(&table, "api_keys").and_then(|keys| read_api_keys(reader, &keys));
    let cors = reader.table(&table, "cors").and_then(|cors| read_cors(reader, &cors));
    let grpc = match reader.table(&table, "grpc") {
        Some(grpc) => read_grpc(reader, &grpc, &roles, &scopes),
        None => Vec::new(),
    };
    let mtls = reader.table(&table, "mtls").map(|mtls| read_mtls(reader, &mtls, &roles, &scopes));
    let clients = reader.table(&table, "clients").map_or_else(Vec::new, |clients| read_clients(reader, &clients));
    let configured = reader.has(&table, "jwt") || reader.has(&table, "api_keys") || reader.has(&table, "mtls");
    if !configured && default == Access::Authenticated {
        let origin = reader.origin_of(&table, "default").clone();
        let help = Some(
            "configure how callers authenticate: `[security.jwt]` with `issuer`, `audiences` and `jwks_url`, \
             `[security.api_keys]` with a keys `file`, or `[security.mtls]`; or set `default = \"public\"`"
                .to_owned(),
        );
        reader.error(
            &origin,
            "security.default",
            "every route needs an authenticated caller, but nothing can authenticate one",
            help,
        );
    }
    Some(SecurityConfig { default, roles, scopes, jwt, api_keys, cors, grpc, mtls, clients })
}

/// `[security.grpc]`: `"package.Service/Method" = "public"` or `{ roles = [..], scopes = [..] }`,
/// naming only declared roles and scopes.
fn read_grpc(reader: &mut Reader<'_>, table: &Table<'_>, roles: &[String], scopes: &[String]) -> Vec<GrpcMethodAccess> {
    let mut methods = Vec::new();
    for (method, node) in reader.named_entries(table) {
        let key = join(&table.path, &format!("\"{method}\""));
        let well_formed = method.split_once('/').is_some_and(|(service, name)| {
            !service.is_empty() && !service.contains(' ') && !name.is_empty() && !name.contains(['/', '.', ' '])
        });
        if !well_formed {
            let help = Some(
                "name the method as `\"store.Payments/Charge\"`: the proto package and service, `/`, the method"
                    .to_owned(),
            );
            reader.error(&node.origin, &key, format!("`{method}` is not a gRPC method"), help);
            continue;
        }
        let authorize = match &node.value {
            crate::tree::Value::String(text) if text == "public" => None,
            crate::tree::Value::String(text) => {
                let help =
                    Some("write `\"public\"`, or `{ roles = [..], scopes = [..] }` for what callers need".to_owned());
                reader.error(&node.origin, &key, format!("unknown requirement `{text}`"), help);
                continue;
            }
            _ => {
                let Some(access) = reader.as_table(node, key.clone()) else { continue };
                let Some(granted) = read_grants(reader, &access, roles, scopes) else { continue };
                Some(granted)
            }
        };
        methods.push(GrpcMethodAccess { method: method.clone(), origin: node.origin.clone(), authorize });
    }
    methods
}

/// `roles` and `scopes` of `table`, naming only what `[security]` declares.
fn read_grants(
    reader: &mut Reader<'_>,
    table: &Table<'_>,
    roles: &[String],
    scopes: &[String],
) -> Option<(Vec<String>, Vec<String>)> {
    reader.deny_unknown_keys(table, &["roles", "scopes"]);
    let named_roles = reader.strings(table, "roles", "[\"clerk\"]").unwrap_or_default();
    let named_scopes = reader.strings(table, "scopes", "[\"payments:write\"]").unwrap_or_default();
    let mut ok = true;
    for (kind, named, declared) in [("roles", &named_roles, roles), ("scopes", &named_scopes, scopes)] {
        for missing in named.iter().filter(|name| !declared.contains(name)) {
            let origin = reader.origin_of(table, kind).clone();
            let help = Some(match crate::suggest::nearest(missing, declared.iter().map(String::as_str)) {
                Some(near) => format!("did you mean `{near}`? or declare it under `[security] {kind}`"),
                None => format!("declare it: `[security] {kind} = [\"{missing}\"]`"),
            });
            reader.error(&origin, &join(&table.path, kind), format!("`{missing}` is not declared"), help);
            ok = false;
        }
    }
    ok.then_some((named_roles, named_scopes))
}

/// `[security.mtls]`: `identities`, each with its grants.
fn read_mtls(reader: &mut Reader<'_>, table: &Table<'_>, roles: &[String], scopes: &[String]) -> MtlsConfig {
    reader.deny_unknown_keys(table, &["identities"]);
    let mut identities = Vec::new();
    if let Some(listed) = reader.table(table, "identities") {
        for (identity, node) in reader.named_entries(&listed) {
            let key = join(&listed.path, &format!("\"{identity}\""));
            let Some(grants) = reader.as_table(node, key) else { continue };
            if let Some((roles, scopes)) = read_grants(reader, &grants, roles, scopes) {
                identities.push((identity.clone(), roles, scopes));
            }
        }
    }
    MtlsConfig { identities, origin: table.origin.clone() }
}

/// `[security.clients.<name>]`, each a client-credentials grant.
fn read_clients(reader: &mut Reader<'_>, table: &Table<'_>) -> Vec<ClientCredentialsConfig> {
    let mut clients = Vec::new();
    for (name, node) in reader.named_entries(table) {
        let Some(client) = reader.as_table(node, join(&table.path, name)) else { continue };
        reader.deny_unknown_keys(&client, &["token_url", "client_id", "client_secret", "scopes", "audience"]);
        let token_url = required_string(
            reader,
            &client,
            "token_url",
            "\"https://login.example.com/realms/shop/protocol/openid-connect/token\"",
        );
        let client_id = required_string(reader, &client, "client_id", "\"orders\"");
        // Read before expansion: a secret written in the file itself ends up in version control (one
        // from a `MARTY__..` variable is fine).
        let in_file = matches!(reader.origin_of(&client, "client_secret"), crate::Origin::Line(_));
        let literal = in_file && reader.raw_string(&client, "client_secret").is_some_and(|text| !text.contains("${"));
        let client_secret = required_string(reader, &client, "client_secret", "\"${ORDERS_CLIENT_SECRET}\"");
        if literal {
            let origin = reader.origin_of(&client, "client_secret").clone();
            let help = Some(format!(
                "read it from the environment: `client_secret = \"${{{}_CLIENT_SECRET}}\"`",
                name.to_ascii_uppercase()
            ));
            reader.error(
                &origin,
                &join(&client.path, "client_secret"),
                "a secret written in the configuration file",
                help,
            );
            continue;
        }
        if let Some(url) = token_url.as_ref().filter(|url| !is_https_or_local(url)) {
            let origin = reader.origin_of(&client, "token_url").clone();
            let help =
                Some("use `https://` (plain `http://` only for an issuer on this machine, in development)".to_owned());
            reader.error(
                &origin,
                &join(&client.path, "token_url"),
                format!("`{url}` is not HTTPS: the secret would travel in clear"),
                help,
            );
            continue;
        }
        let scopes = reader.strings(&client, "scopes", "[\"payments:write\"]").unwrap_or_default();
        let audience = reader.string(&client, "audience");
        let (Some(token_url), Some(client_id), Some(client_secret)) = (token_url, client_id, client_secret) else {
            continue;
        };
        clients.push(ClientCredentialsConfig {
            name: name.clone(),
            token_url,
            client_id,
            client_secret,
            scopes,
            audience,
        });
    }
    clients
}

fn read_cors(reader: &mut Reader<'_>, table: &Table<'_>) -> Option<CorsConfig> {
    reader.deny_unknown_keys(
        table,
        &["allowed_origins", "allowed_methods", "allowed_headers", "expose_headers", "allow_credentials", "max_age"],
    );
    let names = |list: &[&str]| list.iter().map(|name| (*name).to_owned()).collect::<Vec<_>>();
    let allowed_origins = reader.strings(table, "allowed_origins", "[\"https://shop.example.com\"]");
    let allowed_methods = reader
        .strings(table, "allowed_methods", "[\"GET\", \"POST\"]")
        .unwrap_or_else(|| names(&["GET", "POST", "PUT", "PATCH", "DELETE"]));
    let allowed_headers = reader
        .strings(table, "allowed_headers", "[\"authorization\", \"content-type\"]")
        .unwrap_or_else(|| names(&["authorization", "content-type", "x-request-id"]));
    let expose_headers = reader
        .strings(table, "expose_headers", "[\"x-request-id\"]")
        .unwrap_or_else(|| names(&["x-request-id", "retry-after"]));
    let allow_credentials = reader.boolean(table, "allow_credentials").unwrap_or(false);
    let max_age = reader.duration(table, "max_age").unwrap_or(Duration::from_secs(600));
    let origin = reader.origin_of(table, "allowed_origins").clone();
    let key = "security.cors.allowed_origins";
    let Some(allowed_origins) = allowed_origins.filter(|origins| !origins.is_empty()) else {
        let help = Some("list the pages' origins: `allowed_origins = [\"https://shop.example.com\"]`".to_owned());
        reader.error(&origin, key, "no origin: no browser page could call the service", help);
        return None;
    };
    if allowed_origins.iter().any(|origin| origin == "*") {
        if allowed_origins.len() > 1 || allow_credentials {
            let help = Some("use `[\"*\"]` alone and without `allow_credentials`, or list the origins".to_owned());
            reader.error(&origin, key, "`*` allows every origin: browsers refuse it with credentials", help);
            return None;
        }
    } else if let Some(bad) = allowed_origins.iter().find(|origin| !is_origin(origin)) {
        let help =
            Some("write scheme, host and port only: `https://shop.example.com` (no path, no trailing `/`)".to_owned());
        reader.error(&origin, key, format!("`{bad}` is not an origin"), help);
        return None;
    }
    let known = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
    if let Some(bad) = allowed_methods.iter().find(|method| !known.contains(&method.as_str())) {
        let origin = reader.origin_of(table, "allowed_methods").clone();
        let help = Some(format!("methods are upper case: {}", crate::suggest::list(known.iter().copied())));
        reader.error(&origin, "security.cors.allowed_methods", format!("unknown method `{bad}`"), help);
        return None;
    }
    Some(CorsConfig { allowed_origins, allowed_methods, allowed_headers, expose_headers, allow_credentials, max_age })
}

/// `scheme://host[:port]`, as a browser's `Origin` header says.
fn is_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else { return false };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', ' '])
        && rest.chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
}

fn read_api_keys(reader: &mut Reader<'_>, table: &Table<'_>) -> Option<ApiKeysConfig> {
    reader.deny_unknown_keys(table, &["header", "file", "env"]);
    let header = reader.string(table, "header").unwrap_or_else(|| "x-api-key".to_owned());
    let is_token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if header.is_empty() || !header.chars().all(is_token) || header.eq_ignore_ascii_case("authorization") {
        let origin = reader.origin_of(table, "header").clone();
        let help = Some("name a header of its own, e.g. `header = \"x-api-key\"`".to_owned());
        reader.error(&origin, "security.api_keys.header", format!("`{header}` cannot carry API keys"), help);
        return None;
    }
    let (key, value) = one_of(
        reader,
        table,
        ["file", "env"],
        "keep one: `file` names a mounted secret, `env` a variable holding the same text",
        ("no keys file", "add `file = \"/run/secrets/api-keys.toml\"`, the keys as SHA-256 hashes with their roles"),
    )?;
    let source = match key {
        "file" => ApiKeysSource::File(value),
        _ => ApiKeysSource::Env(value),
    };
    Some(ApiKeysConfig { header: header.to_ascii_lowercase(), source })
}

fn read_jwt(reader: &mut Reader<'_>, table: &Table<'_>) -> Option<JwtConfig> {
    reader.deny_unknown_keys(table, JWT_KEYS);
    let issuer = required_string(reader, table, "issuer", "\"https://login.example.com/realms/shop\"");
    let audiences = reader.strings(table, "audiences", "[\"orders\"]");
    if audiences.as_ref().is_some_and(Vec::is_empty) || (audiences.is_none() && !reader.has(table, "audiences")) {
        let origin = reader.origin_of(table, "audiences").clone();
        let help =
            Some("name the audience this service's tokens are issued for: `audiences = [\"orders\"]`".to_owned());
        reader.error(&origin, "security.jwt.audiences", "no audience: a token issued for any service would do", help);
    }
    let algorithms = read_algorithms(reader, table);
    let keys = read_key_source(reader, table);
    let leeway = reader.duration(table, "leeway").unwrap_or(Duration::from_secs(30));
    if leeway > Duration::from_secs(300) {
        let origin = reader.origin_of(table, "leeway").clone();
        let help = Some("keep it to clock skew: `leeway = \"30s\"`".to_owned());
        reader.error(&origin, "security.jwt.leeway", "more than 5 minutes keeps expired tokens valid", help);
    }
    let refresh = reader.duration(table, "refresh").unwrap_or(Duration::from_secs(300));
    let roles_claim = reader.string(table, "roles_claim").unwrap_or_else(|| "roles".to_owned());
    let scopes_claim = reader.string(table, "scopes_claim").unwrap_or_else(|| "scope".to_owned());
    Some(JwtConfig {
        issuer: issuer?,
        audiences: audiences.filter(|audiences| !audiences.is_empty())?,
        algorithms: algorithms?,
        keys: keys?,
        leeway,
        roles_claim,
        scopes_claim,
        refresh,
    })
}

fn required_string(reader: &mut Reader<'_>, table: &Table<'_>, key: &str, example: &str) -> Option<String> {
    let value = reader.string(table, key);
    if value.is_none() && !reader.has(table, key) {
        let origin = reader.origin_of(table, key).clone();
        reader.error(&origin, &join(&table.path, key), "missing key", Some(format!("add `{key} = {example}`")));
    }
    value
}

/// `algorithms`: asymmetric ones only, never `none`.
fn read_algorithms(reader: &mut Reader<'_>, table: &Table<'_>) -> Option<Vec<String>> {
    let Some(algorithms) = reader.strings(table, "algorithms", "[\"RS256\", \"ES256\"]") else {
        return (!reader.has(table, "algorithms")).then(|| vec!["RS256".to_owned(), "ES256".to_owned()]);
    };
    let origin = reader.origin_of(table, "algorithms").clone();
    let key = "security.jwt.algorithms";
    let valid = crate::suggest::list(JWT_ALGORITHMS.iter().copied());
    for algorithm in &algorithms {
        if JWT_ALGORITHMS.contains(&algorithm.as_str()) {
            continue;
        }
        let (problem, help) = match algorithm.to_ascii_uppercase().as_str() {
            "NONE" => ("`none` accepts unsigned tokens: anyone could forge one".to_owned(), format!("accepted: {valid}")),
            hmac if hmac.starts_with("HS") => (
                format!("`{algorithm}` is HMAC: it would need the issuer's shared secret, and accept tokens signed with the public key"),
                format!("use the issuer's asymmetric keys: {valid}"),
            ),
            _ => (
                format!("unknown algorithm `{algorithm}`"),
                match crate::suggest::nearest(algorithm, JWT_ALGORITHMS.iter().copied()) {
                    Some(near) => format!("did you mean `{near}`? accepted: {valid}"),
                    None => format!("accepted: {valid}"),
                },
            ),
        };
        reader.error(&origin, key, problem, Some(help));
        return None;
    }
    if algorithms.is_empty() {
        reader.error(&origin, key, "no algorithm: no token could be accepted", Some(format!("accepted: {valid}")));
        return None;
    }
    Some(algorithms)
}

/// `jwks_url` or `discovery_url`, exactly one, over HTTPS unless the issuer is on this machine.
fn read_key_source(reader: &mut Reader<'_>, table: &Table<'_>) -> Option<KeySource> {
    let (key, url) = one_of(
        reader,
        table,
        ["jwks_url", "discovery_url"],
        "keep one: `jwks_url` names the keys, `discovery_url` the issuer's metadata",
        (
            "no keys to check signatures with",
            "add `jwks_url = \"https://login.example.com/.../certs\"`, or `discovery_url` for OpenID Connect discovery",
        ),
    )?;
    let source = match key {
        "jwks_url" => KeySource::Jwks(url),
        _ => KeySource::Discovery(url),
    };
    let (KeySource::Jwks(url) | KeySource::Discovery(url)) = &source;
    if !is_https_or_local(url) {
        let origin = reader.origin_of(table, key).clone();
        let help =
            Some("use `https://` (plain `http://` only for an issuer on this machine, in development)".to_owned());
        reader.error(
            &origin,
            &format!("security.jwt.{key}"),
            format!("`{url}` is not HTTPS: keys fetched over it could be replaced"),
            help,
        );
        return None;
    }
    Some(source)
}

/// Exactly one of two keys that say the same thing two ways: which, with its value; an error when
/// both or neither are given (`missing`: problem and help).
fn one_of(
    reader: &mut Reader<'_>,
    table: &Table<'_>,
    [first, second]: [&'static str; 2],
    both_help: &str,
    (missing, missing_help): (&str, &str),
) -> Option<(&'static str, String)> {
    match (reader.string(table, first), reader.string(table, second)) {
        (Some(value), None) => Some((first, value)),
        (None, Some(value)) => Some((second, value)),
        (Some(_), Some(_)) => {
            let origin = reader.origin_of(table, second).clone();
            let problem = format!("both `{first}` and `{second}`");
            reader.error(&origin, &join(&table.path, second), problem, Some(both_help.to_owned()));
            None
        }
        (None, None) => {
            // A key given with a bad value was reported where it was read.
            if !reader.has(table, first) && !reader.has(table, second) {
                let origin = reader.origin_of(table, first).clone();
                reader.error(&origin, &join(&table.path, first), missing, Some(missing_help.to_owned()));
            }
            None
        }
    }
}

fn is_https_or_local(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => host,
    };
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn errors(text: &str) -> String {
        Config::parse(text, "marty.toml").unwrap_err().to_string()
    }

    const JWT: &str = "[security.jwt]\nissuer = \"https://id.example\"\naudiences = [\"orders\"]\njwks_url = \"https://id.example/certs\"\n";

    #[test]
    fn a_jwt_issuer_is_read_with_its_defaults() {
        let config = Config::parse(&format!("[security]\nroles = [\"admin\"]\n{JWT}"), "marty.toml").unwrap();
        let security = config.security.unwrap();
        assert_eq!(security.default, super::Access::Authenticated);
        assert_eq!(security.roles, ["admin"]);
        let jwt = security.jwt.unwrap();
        assert_eq!(jwt.algorithms, ["RS256", "ES256"]);
        assert_eq!(jwt.keys, super::KeySource::Jwks("https://id.example/certs".into()));
        assert_eq!((jwt.roles_claim.as_str(), jwt.scopes_claim.as_str()), ("roles", "scope"));
    }

    #[test]
    fn unsafe_algorithms_and_plain_http_keys_are_refused_with_the_fix() {
        let none = errors(&format!("{JWT}algorithms = [\"none\"]\n"));
        assert!(none.contains("security.jwt.algorithms") && none.contains("forge"), "{none}");
        let hmac = errors(&format!("{JWT}algorithms = [\"HS256\"]\n"));
        assert!(hmac.contains("HMAC") && hmac.contains("RS256"), "{hmac}");
        let typo = errors(&format!("{JWT}algorithms = [\"RS265\"]\n"));
        assert!(typo.contains("did you mean `RS256`"), "{typo}");
        let plain = errors(&JWT.replace("https://id.example/certs", "http://id.example/certs"));
        assert!(plain.contains("security.jwt.jwks_url") && plain.contains("not HTTPS"), "{plain}");
        assert!(Config::parse(&JWT.replace("https://id.example/certs", "http://127.0.0.1:9/certs"), "m").is_ok());
    }

    #[test]
    fn cors_origins_are_origins_and_a_wildcard_goes_without_credentials() {
        let cors = |lines: &str| format!("[security]\ndefault = \"public\"\n[security.cors]\n{lines}");
        let config = Config::parse(&cors("allowed_origins = [\"https://shop.example.com\"]\n"), "m").unwrap();
        let cors_config = config.security.unwrap().cors.unwrap();
        assert_eq!(cors_config.allowed_methods, ["GET", "POST", "PUT", "PATCH", "DELETE"]);
        let path = errors(&cors("allowed_origins = [\"https://shop.example.com/\"]\n"));
        assert!(path.contains("is not an origin"), "{path}");
        let wildcard = errors(&cors("allowed_origins = [\"*\"]\nallow_credentials = true\n"));
        assert!(wildcard.contains("with credentials"), "{wildcard}");
    }

    #[test]
    fn grpc_methods_name_declared_roles_and_scopes() {
        let base =
            "[security]\ndefault = \"public\"\nroles = [\"clerk\"]\nscopes = [\"payments:write\"]\n[security.grpc]\n";
        let config = Config::parse(
            &format!("{base}\"store.Payments/Charge\" = {{ roles = [\"clerk\"], scopes = [\"payments:write\"] }}\n\"store.Payments/Quote\" = \"public\"\n"),
            "m",
        )
        .unwrap();
        let grpc = config.security.unwrap().grpc;
        assert_eq!(grpc[0].service(), "store.Payments");
        assert_eq!(grpc[0].authorize, Some((vec!["clerk".to_owned()], vec!["payments:write".to_owned()])));
        assert_eq!(grpc[1].authorize, None);
        let undeclared = errors(&format!("{base}\"store.Payments/Charge\" = {{ roles = [\"clark\"] }}\n"));
        assert!(undeclared.contains("did you mean `clerk`"), "{undeclared}");
        let path = errors(&format!("{base}\"/store.Payments/Charge\" = \"public\"\n"));
        assert!(path.contains("is not a gRPC method"), "{path}");
        let typo = errors(&format!("{base}\"store.Payments/Charge\" = \"pubic\"\n"));
        assert!(typo.contains("unknown requirement"), "{typo}");
    }

    #[test]
    fn client_secrets_come_from_the_environment_and_go_over_https() {
        let client = |secret: &str, url: &str| {
            format!("[security]\ndefault = \"public\"\n[security.clients.payments]\ntoken_url = \"{url}\"\nclient_id = \"orders\"\nclient_secret = \"{secret}\"\n")
        };
        let config = Config::parse(&client("${PAYMENTS_SECRET}", "https://id.example/token"), "m").unwrap();
        let payments = &config.security.unwrap().clients[0];
        assert_eq!((payments.name.as_str(), payments.client_id.as_str()), ("payments", "orders"));
        assert!(!format!("{payments:?}").contains("PAYMENTS_SECRET"), "the secret in Debug");
        let literal = errors(&client("hunter2", "https://id.example/token"));
        assert!(literal.contains("client_secret") && literal.contains("${PAYMENTS_CLIENT_SECRET}"), "{literal}");
        let plain = errors(&client("${PAYMENTS_SECRET}", "http://id.example/token"));
        assert!(plain.contains("token_url") && plain.contains("not HTTPS"), "{plain}");
    }

    #[test]
    fn authentication_by_default_needs_a_way_to_authenticate() {
        let error = errors("[security]\nroles = [\"admin\"]\n");
        assert!(error.contains("security.default") && error.contains("[security.jwt]"), "{error}");
        assert!(Config::parse("[security]\ndefault = \"public\"\n", "m").is_ok());
        let audience = errors(&JWT.replace("audiences = [\"orders\"]\n", ""));
        assert!(audience.contains("security.jwt.audiences"), "{audience}");
        let twice = errors("[security]\ndefault = \"public\"\nroles = [\"admin\", \"admin\"]\n");
        assert!(twice.contains("listed twice"), "{twice}");
    }
}
