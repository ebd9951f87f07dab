//! The issuer's public keys: fetched from its JWKS (directly, or named by OpenID Connect
//! discovery), cached, refreshed in the background and once more when a token names a key the
//! cache does not hold — at most once per [`MIN_REFETCH`], so a flood of made-up `kid`s never turns
//! into a flood of fetches. While the issuer cannot be reached, the cached keys keep validating.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};
use marty_config::KeySource;
use tokio::time::Instant;

/// The shortest time between two fetches of the keys.
pub(super) const MIN_REFETCH: Duration = Duration::from_secs(10);
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest JWKS or discovery document read.
const MAX_DOCUMENT_BYTES: u64 = 1 << 20;

/// One public key of the issuer.
#[derive(Clone)]
pub(super) struct Key {
    pub(super) decoding: DecodingKey,
    /// The algorithm the JWK is pinned to, when it says (`alg`).
    pub(super) algorithm: Option<Algorithm>,
}

/// What a lookup found.
pub(super) enum Lookup {
    Found(Key),
    /// The keys are known, and this one is not among them.
    Unknown,
    /// No keys were ever fetched: nothing can be validated yet.
    NotFetched,
}

/// The cached keys, and when they were last fetched.
pub(super) struct KeySet {
    source: KeySource,
    issuer: String,
    keys: RwLock<Option<HashMap<String, Key>>>,
    /// When the last fetch started; also serialises fetches (one at a time).
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl KeySet {
    pub(super) fn new(source: KeySource, issuer: String) -> Arc<Self> {
        Arc::new(KeySet { source, issuer, keys: RwLock::new(None), last_fetch: tokio::sync::Mutex::new(None) })
    }

    /// The key a token's header names (`kid`); a token without one may use the only key there is.
    pub(super) fn lookup(&self, kid: Option<&str>) -> Lookup {
        let keys = self.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(keys) = keys.as_ref() else { return Lookup::NotFetched };
        let found = match kid {
            Some(kid) => keys.get(kid),
            None if keys.len() == 1 => keys.values().next(),
            None => None,
        };
        found.cloned().map_or(Lookup::Unknown, Lookup::Found)
    }

    /// Fetches the keys unless they were fetched less than [`MIN_REFETCH`] ago: for a `kid` the
    /// cache does not know. Concurrent callers wait for the one fetch.
    pub(super) async fn refetch_for_unknown_key(&self) {
        let mut last_fetch = self.last_fetch.lock().await;
        if last_fetch.is_some_and(|at| at.elapsed() < MIN_REFETCH) {
            return;
        }
        *last_fetch = Some(Instant::now());
        if let Err(error) = self.fetch().await {
            tracing::warn!(%error, "cannot fetch the issuer's keys; validating with the keys cached");
        }
    }

    /// Fetches the keys now, whatever the last fetch.
    pub(super) async fn refresh(&self) -> Result<usize, String> {
        let mut last_fetch = self.last_fetch.lock().await;
        *last_fetch = Some(Instant::now());
        self.fetch().await
    }

    async fn fetch(&self) -> Result<usize, String> {
        let (source, issuer) = (self.source.clone(), self.issuer.clone());
        let set = tokio::task::spawn_blocking(move || fetch_key_set(&source, &issuer))
            .await
            .map_err(|error| format!("the fetch did not finish: {error}"))??;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            // Keys for encryption are not for checking signatures.
            if jwk
                .common
                .public_key_use
                .as_ref()
                .is_some_and(|usage| *usage != jsonwebtoken::jwk::PublicKeyUse::Signature)
            {
                continue;
            }
            let Ok(decoding) = DecodingKey::from_jwk(jwk) else {
                tracing::debug!(kid = ?jwk.common.key_id, "skipping a key of a type Marty does not check signatures with");
                continue;
            };
            let algorithm = jwk.common.key_algorithm.and_then(|algorithm| algorithm.to_string().parse().ok());
            keys.insert(jwk.common.key_id.clone().unwrap_or_default(), Key { decoding, algorithm });
        }
        if keys.is_empty() {
            return Err("the issuer's key set holds no signing key Marty can use".to_owned());
        }
        let count = keys.len();
        *self.keys.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(keys);
        tracing::info!(keys = count, "fetched the issuer's keys");
        Ok(count)
    }

    /// Refreshes the keys every `every`, and sooner after a failure (from [`MIN_REFETCH`], doubling
    /// up to `every`), for as long as the key set is in use.
    pub(super) fn spawn_refresh(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut wait = Duration::ZERO;
            loop {
                tokio::time::sleep(wait).await;
                let Some(keys) = weak.upgrade() else { return };
                wait = match keys.refresh().await {
                    Ok(_) => every,
                    Err(error) => {
                        tracing::warn!(%error, "cannot fetch the issuer's keys; validating with the keys cached");
                        (wait * 2).clamp(MIN_REFETCH, every.max(MIN_REFETCH))
                    }
                };
            }
        });
    }
}

/// The key set, from the JWKS URL or the one discovery names (blocking: run off the runtime).
fn fetch_key_set(source: &KeySource, issuer: &str) -> Result<JwkSet, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(FETCH_TIMEOUT)).build().new_agent();
    let get = |url: &str| -> Result<String, String> {
        let mut response = agent.get(url).call().map_err(|error| format!("GET {url}: {error}"))?;
        response
            .body_mut()
            .with_config()
            .limit(MAX_DOCUMENT_BYTES)
            .read_to_string()
            .map_err(|error| format!("GET {url}: {error}"))
    };
    let jwks_url = match source {
        KeySource::Jwks(url) => url.clone(),
        KeySource::Discovery(url) => {
            #[derive(serde::Deserialize)]
            struct Discovery {
                issuer: String,
                jwks_uri: String,
            }
            let discovery: Discovery = serde_json::from_str(&get(url)?)
                .map_err(|error| format!("{url} is not an OpenID Connect discovery document: {error}"))?;
            if discovery.issuer != issuer {
                return Err(format!(
                    "{url} describes issuer `{}`, not `{issuer}` as `[security.jwt] issuer` says",
                    discovery.issuer
                ));
            }
            if url.starts_with("https://") && !discovery.jwks_uri.starts_with("https://") {
                return Err(format!("{url} names keys at `{}`, which is not HTTPS", discovery.jwks_uri));
            }
            discovery.jwks_uri
        }
    };
    serde_json::from_str(&get(&jwks_url)?).map_err(|error| format!("{jwks_url} is not a JWKS document: {error}"))
}
