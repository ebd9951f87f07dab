//! Tokens for calling other secured services: the OAuth2 client-credentials grant at the issuer's
//! token endpoint (`[security.clients.<name>]`), cached, and fetched again before it expires.
//!
//! ```toml
//! [security.clients.payments]
//! token_url = "https://login.example.com/realms/shop/protocol/openid-connect/token"
//! client_id = "orders"
//! client_secret = "${ORDERS_CLIENT_SECRET}"   # from the environment; a literal is refused
//! scopes = ["payments:write"]
//! ```
//!
//! ```no_run
//! # async fn call() -> Result<(), Box<dyn std::error::Error>> {
//! let payments = marty::security::TokenSource::named("payments")?;
//! // HTTP: the header to send.
//! let authorization = payments.authorization().await?;
//! // gRPC (feature `grpc`): `client.charge(payments.authorize(tonic::Request::new(charge)).await?)`,
//! // or `PaymentsClient::with_interceptor(channel, payments.interceptor())`.
//! # Ok(()) }
//! ```
//!
//! A token is reused until 80% of its lifetime has passed; then the next caller fetches a new one
//! in the background while the current one is still served, so no call waits on the issuer while a
//! valid token is at hand. Callers without a valid token wait for one fetch together. A failed
//! fetch is remembered for a second: meanwhile callers get the same error at once, so an issuer
//! that is down is not asked again by every call, and its failure is logged once per window rather
//! than once per call. The secret and the tokens are never logged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use marty_config::ClientCredentialsConfig;

use crate::throttled_log::{Throttle, WINDOW};

/// How long a token request may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A token endpoint's answer is small; a larger one is refused.
const MAX_ANSWER_BYTES: u64 = 64 * 1024;
/// How long a failed fetch is answered from memory before the issuer is asked again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Bearer tokens from one `[security.clients.<name>]`: clone it freely, the clones share the cache.
#[derive(Clone)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientCredentialsConfig,
    cached: Mutex<Option<Cached>>,
    /// One fetch at a time; callers without a valid token wait on it.
    fetching: tokio::sync::Mutex<()>,
    /// An early refresh is under way.
    refreshing: AtomicBool,
    /// The last fetch's failure, while it is recent enough to answer callers without fetching.
    failed: Mutex<Option<(Instant, TokenError)>>,
    /// Failed background fetches: one warning a window.
    failures_logged: Throttle,
}

#[derive(Clone)]
struct Cached {
    authorization: HeaderValue,
    refresh_at: Instant,
    expires_at: Instant,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource").field("client", &self.inner.config).finish_non_exhaustive()
    }
}

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError(String);

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TokenError {}

impl TokenSource {
    /// The source `[security.clients.<name>]` configures, in the global runtime's configuration.
    pub fn named(name: &str) -> Result<Self, TokenError> {
        let registry = crate::Runtime::global()
            .registry()
            .cloned()
            .ok_or_else(|| TokenError("the configuration is not loaded yet: start the service first".to_owned()))?;
        Self::configured(&registry.config(), name)
    }

    /// The source `[security.clients.<name>]` configures in `config` (a service's own, when several
    /// run in one process).
    pub fn configured(config: &marty_config::Config, name: &str) -> Result<Self, TokenError> {
        let clients = config.security.as_ref().map(|security| security.clients.as_slice()).unwrap_or_default();
        match clients.iter().find(|client| client.name == name) {
            Some(client) => Ok(Self::new(client.clone())),
            None => Err(TokenError(format!("no `[security.clients.{name}]` in {}", config.file))),
        }
    }

    /// A source for `config`.
    pub fn new(config: ClientCredentialsConfig) -> Self {
        TokenSource {
            inner: Arc::new(Inner {
                config,
                cached: Mutex::new(None),
                fetching: tokio::sync::Mutex::new(()),
                refreshing: AtomicBool::new(false),
                failed: Mutex::new(None),
                failures_logged: Throttle::new(WINDOW),
            }),
        }
    }

    /// `Bearer <token>`, for an `Authorization` header: the cached token while it is valid (fetching
    /// the next one in the background once 80% of its life is over), else a new one.
    pub async fn authorization(&self) -> Result<HeaderValue, TokenError> {
        if let Some(valid) = self.valid_now() {
            return Ok(valid);
        }
        let _only_fetch = self.inner.fetching.lock().await;
        // Another caller may have fetched while this one waited, or failed a moment ago.
        if let Some(valid) = self.valid_now() {
            return Ok(valid);
        }
        if let Some(error) = self.recent_failure() {
            return Err(error);
        }
        self.fetch().await
    }

    /// The last fetch's error, if it failed less than [`RETRY_AFTER_FAILURE`] ago.
    fn recent_failure(&self) -> Option<TokenError> {
        let failed = self.inner.failed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        failed.as_ref().filter(|(at, _)| at.elapsed() < RETRY_AFTER_FAILURE).map(|(_, error)| error.clone())
    }

    /// The cached token if it is valid; starts the early refresh when it is due.
    fn valid_now(&self) -> Option<HeaderValue> {
        let cached = self.inner.cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()?;
        let now = Instant::now();
        if now >= cached.expires_at {
            return None;
        }
        if now >= cached.refresh_at {
            self.fetch_in_background();
        }
        Some(cached.authorization)
    }

    /// Fetches a new token on a task of its own, unless one is already being fetched that way.
    fn fetch_in_background(&self) {
        if self.recent_failure().is_some() || self.inner.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let source = self.clone();
        tokio::spawn(async move {
            let only_fetch = source.inner.fetching.lock().await;
            let due = source
                .inner
                .cached
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .as_ref()
                .is_none_or(|cached| Instant::now() >= cached.refresh_at);
            if due {
                if let Err(error) = source.fetch().await {
                    if let Some(times) = source.inner.failures_logged.hit_for(()) {
                        tracing::warn!(target: "marty::security", client = %source.inner.config.name, %error, times, "fetching a token failed; the current one, if any, is served until it expires");
                    }
                }
            }
            drop(only_fetch);
            source.inner.refreshing.store(false, Ordering::Release);
        });
    }

    /// A new token from the token endpoint, cached; a failure is remembered.
    async fn fetch(&self) -> Result<HeaderValue, TokenError> {
        let fetched = self.request_and_cache().await;
        let failure = fetched.as_ref().err().map(|error| (Instant::now(), error.clone()));
        *self.inner.failed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = failure;
        fetched
    }

    async fn request_and_cache(&self) -> Result<HeaderValue, TokenError> {
        let config = self.inner.config.clone();
        let started = Instant::now();
        let (token, lifetime) = tokio::task::spawn_blocking(move || request_token(&config))
            .await
            .map_err(|error| TokenError(format!("the token request did not finish: {error}")))??;
        let mut authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| TokenError("the token endpoint answered a token that cannot be a header".to_owned()))?;
        authorization.set_sensitive(true);
        let cached = Cached {
            authorization: authorization.clone(),
            refresh_at: started + lifetime.mul_f64(0.8),
            expires_at: started + lifetime,
        };
        *self.inner.cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(cached);
        tracing::debug!(target: "marty::security", client = %self.inner.config.name, ?lifetime, "fetched a token");
        Ok(authorization)
    }

    /// `request` with the token in its metadata, waiting for one if there is no valid token (a
    /// token that cannot be had is `UNAVAILABLE`: transient, so retry policies retry it).
    #[cfg(feature = "grpc")]
    pub async fn authorize<T>(&self, mut request: tonic::Request<T>) -> Result<tonic::Request<T>, tonic::Status> {
        let authorization =
            self.authorization().await.map_err(|error| tonic::Status::unavailable(error.to_string()))?;
        request.metadata_mut().insert("authorization", metadata_value(&authorization)?);
        Ok(request)
    }

    /// A tonic interceptor adding the cached token to each call's metadata. An interceptor cannot
    /// wait: without a valid token the call fails `UNAVAILABLE` (transient) while one is fetched in
    /// the background. Prefer [`authorize`](Self::authorize), which waits, where calls are made.
    #[cfg(feature = "grpc")]
    pub fn interceptor(&self) -> impl tonic::service::Interceptor + Clone {
        let source = self.clone();
        move |mut request: tonic::Request<()>| {
            let Some(authorization) = source.valid_now() else {
                if let Some(error) = source.recent_failure() {
                    return Err(tonic::Status::unavailable(format!("no token for this call: {error}")));
                }
                source.fetch_in_background();
                return Err(tonic::Status::unavailable("no token for this call yet; fetching one"));
            };
            request.metadata_mut().insert("authorization", metadata_value(&authorization)?);
            Ok(request)
        }
    }
}

#[cfg(feature = "grpc")]
fn metadata_value(authorization: &HeaderValue) -> Result<tonic::metadata::AsciiMetadataValue, tonic::Status> {
    tonic::metadata::MetadataValue::try_from(authorization.as_bytes())
        .map_err(|_| tonic::Status::internal("the token cannot be metadata"))
}

/// POSTs the grant; the token and how long it lives.
fn request_token(config: &ClientCredentialsConfig) -> Result<(String, Duration), TokenError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        access_token: String,
        token_type: String,
        expires_in: Option<u64>,
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(FETCH_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let scope = config.scopes.join(" ");
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_id", config.client_id.as_str()),
        ("client_secret", config.client_secret.as_str()),
    ];
    if !scope.is_empty() {
        form.push(("scope", &scope));
    }
    if let Some(audience) = &config.audience {
        form.push(("audience", audience));
    }
    let url = &config.token_url;
    let mut response = agent.post(url).send_form(form).map_err(|error| TokenError(format!("POST {url}: {error}")))?;
    let status = response.status();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES)
        .read_to_string()
        .map_err(|error| TokenError(format!("POST {url}: {error}")))?;
    if !status.is_success() {
        // An OAuth2 error answer names the problem (`invalid_client`) and holds no secret.
        let reason = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|error| error.get("error").and_then(|code| code.as_str()).map(str::to_owned))
            .unwrap_or_default();
        return Err(TokenError(format!("POST {url}: {status} {reason}")));
    }
    let answer: Answer =
        serde_json::from_str(&body).map_err(|_| TokenError(format!("POST {url}: not an OAuth2 token answer")))?;
    if !answer.token_type.eq_ignore_ascii_case("bearer") {
        return Err(TokenError(format!("POST {url}: a `{}` token, not a bearer token", answer.token_type)));
    }
    // No lifetime said: a minute, rather than a token kept forever.
    Ok((answer.access_token, Duration::from_secs(answer.expires_in.unwrap_or(60).max(1))))
}
