//! Who may call a service: callers authenticate with a bearer token (a JWT from your OpenID Connect
//! or OAuth2 issuer), checked against the issuer's public keys, and handlers read the caller as a
//! [`Principal`]. Configured under `[security]` in `marty.toml` (feature `security`):
//!
//! ```toml
//! [security]
//! default = "authenticated"   # what a route requires; "public" lets anyone in
//! roles = ["admin", "clerk"]  # the roles the service's attributes may name
//! scopes = ["orders:read"]
//!
//! [security.jwt]
//! issuer = "https://login.example.com/realms/shop"
//! audiences = ["orders"]
//! jwks_url = "https://login.example.com/realms/shop/protocol/openid-connect/certs"
//! # or: discovery_url = "https://login.example.com/realms/shop/.well-known/openid-configuration"
//! algorithms = ["RS256", "ES256"]      # asymmetric only: never `none`, never HMAC
//! roles_claim = "realm_access.roles"   # dotted for nested claims (default `roles`)
//! scopes_claim = "scope"               # a space-separated string or an array (`scp` when absent)
//! leeway = "30s"
//! refresh = "5m"
//! ```
//!
//! What a request gets:
//! - no `Authorization: Bearer` on a route that needs a caller: **401** with `WWW-Authenticate:
//!   Bearer`; a token that is not valid (signature, issuer, audience, expiry, algorithm): **401**
//!   with `WWW-Authenticate: Bearer error="invalid_token"` and nothing said about why (the reason
//!   goes to the log at debug level, on target `marty::security`; the token never does);
//! - before the issuer's keys were ever fetched: **503** with `Retry-After` (the token may well be
//!   valid); once fetched, the keys are refreshed every `refresh` and when a token names a key not
//!   in the cache (at most once every 10 s), and the cached keys keep validating while the issuer
//!   is unreachable;
//! - `/healthz`, `/readyz` and `/metrics` stay open to probes and scrapers.
//!
//! Per route, `#[public]` lets anyone in, and `#[authorize(roles = ["admin", "clerk"], scopes =
//! ["orders:write"])]` requires a caller holding **any** of the roles and **all** of the scopes
//! (bare `#[authorize]`: any authenticated caller); others get **403**. The names must be declared
//! under `[security]`: a name that is not is a compile error at the literal, with the nearest
//! declared name, and a startup error if the configuration in force lost it. A token that is
//! present but not valid is refused even on a `#[public]` route.
//!
//! Machine clients can present an API key instead (`[security.api_keys]`): a header (default
//! `x-api-key`) carrying a key that the service knows only by its SHA-256, from a file read at
//! startup, each key granting its own roles and scopes (see `marty::config::parse_api_keys` for the
//! file). The caller's subject is `api-key:<name>`. A request with both a bearer token and an API
//! key is refused.
//!
//! Browser pages on other origins may call the service as `[security.cors]` allows
//! (`allowed_origins`, `allowed_methods`, `allowed_headers`, `expose_headers`,
//! `allow_credentials`, `max_age`); preflights are answered before authentication. Every response
//! also carries the usual security headers (`[http] security_headers`).
//!
//! Rate limits (`[rate_limit]`, see below) are checked in the same place, after routing:
//!
//! ```toml
//! [rate_limit]
//! default = { limit = "100/s", burst = 200 }  # routes without their own (none: unlimited)
//! trusted_proxies = ["10.0.0.0/8"]           # whose X-Forwarded-For names the client
//! client_ip_header = "x-forwarded-for"       # or "forwarded" (RFC 7239), "x-real-ip"
//! max_keys = 100000                          # callers tracked per limit
//!
//! [rate_limit.routes]
//! "POST /orders" = { limit = "10/s", burst = 20, key = "caller" }  # or key = "ip"
//! ```
//!
//! A limit is GCRA (`governor`): `limit` requests per second, minute or hour, `burst` at once
//! (default: `limit`'s count). `key = "caller"` (the default) counts the authenticated subject or
//! API key, and the client's address for anonymous callers; `key = "ip"` counts the address and is
//! checked before credentials, so a flood of forged tokens costs no signature checks. Failed
//! credentials always count against the address. The address is the socket's, unless the peer is
//! one of `trusted_proxies`: then the forwarding chain is walked back to the first hop that is not
//! a trusted proxy. IPv6 clients are counted per /64. Over the limit: **429** problem+json with
//! `Retry-After`; limited responses carry `RateLimit-Policy: "POST /orders";q=20;w=2` and
//! `RateLimit: "POST /orders";r=<left>;t=<seconds until whole>` (the IETF draft's fields). A route
//! named under `[rate_limit.routes]` that the service does not have is a compile error, and a
//! startup error for the configuration in force (a file several services share can therefore hold
//! only `default`). Each limit tracks at most `max_keys` callers: beyond them, new callers share
//! one allowance until tracked ones go quiet, and a warning says so.
//!
//! **gRPC** methods pass the same checks (authentication, `[rate_limit] default`), with the bearer
//! token or API key in the call's metadata, and are answered with gRPC statuses: `UNAUTHENTICATED`,
//! `PERMISSION_DENIED`, `RESOURCE_EXHAUSTED`, `UNAVAILABLE`. A method follows `[security] default`
//! unless `[security.grpc]` says otherwise, by full method name:
//!
//! ```toml
//! [security.grpc]
//! "store.Payments/Quote" = "public"
//! "store.Payments/Charge" = { roles = ["clerk"], scopes = ["payments:write"] }
//! ```
//!
//! Undeclared roles and scopes are errors when the service compiles (the file is checked with it);
//! the methods are checked at startup against the services the service serves and their
//! descriptors (`#[service(grpc(..), reflection = FILE_DESCRIPTOR_SET)]`, required for an entry to
//! be checked): a misspelled method stops startup with the nearest real one. Health and reflection
//! stay open, as the HTTP probes do.
//!
//! Services calling each other can prove who they are with **client certificates** (mTLS): with
//! `[http.tls] client_ca` (feature `tls`) and `[security.mtls]`, a caller without a token or API
//! key is the identity its certificate names (its first URI subject alternative name, a SPIFFE id,
//! else its first DNS name), granted roles and scopes by `identities`:
//!
//! ```toml
//! [security.mtls.identities]
//! "spiffe://shop.example/ns/prod/sa/orders" = { roles = ["service"], scopes = ["payments:write"] }
//! ```
//!
//! A bearer token in the same request wins (it names the end user the calling service acts for).
//!
//! Every refused request (HTTP or gRPC), and every allowed request to a route marked `#[audit]`,
//! is written to the audit trail (see [`marty::audit`](mod@crate::audit)): who, what, decision,
//! reason, request id, trace id and time, on the tracing target `marty::audit`, never with the
//! credentials.
//!
//! **Calling other secured services.** A [`TokenSource`] gets and caches OAuth2
//! client-credentials tokens (`[security.clients.<name>]`): `authorization().await` for an HTTP
//! header, `authorize(request).await` (or `interceptor()`) for a tonic call. [`DevIssuer`] issues
//! such tokens on this machine, for development and tests only. To present this service's
//! certificate (mTLS), give the clients the files `[http.tls]` serves (cert-manager issues one pair
//! for both uses when the certificate has the `client auth` usage):
//!
//! ```text
//! // tonic (its `tls-ring` feature)
//! let tls = tonic::transport::ClientTlsConfig::new()
//!     .identity(tonic::transport::Identity::from_pem(std::fs::read(cert)?, std::fs::read(key)?))
//!     .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(ca)?));
//! let channel = tonic::transport::Channel::from_static("https://payments:8443").tls_config(tls)?.connect().await?;
//! // reqwest (its `rustls-tls` feature): the certificate and key in one PEM
//! let client = reqwest::Client::builder().identity(reqwest::Identity::from_pem(&pem)?).build()?;
//! ```
//!
//! A new channel or client reads the files again: make them per connection pool, not once per
//! process, when certificates rotate.
//!
//! HTTP answers are problem+json.

mod api_keys;
mod authenticator;
mod client_credentials;
pub(crate) mod cors;
mod dev_issuer;
#[cfg(test)]
mod fuzz;
mod guard;
mod jwks;
mod mtls;
mod principal;
mod rate_limit;

pub(crate) use authenticator::Authenticator;
pub use client_credentials::{TokenError, TokenSource};
pub use dev_issuer::DevIssuer;
pub(crate) use guard::Gate;
pub(crate) use mtls::identity as mtls_identity;
pub use principal::Principal;
pub(crate) use rate_limit::RateLimits;
