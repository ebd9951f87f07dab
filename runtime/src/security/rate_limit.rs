//! `[rate_limit]`: each route's allowance per caller (GCRA, from the `governor` crate), checked after
//! routing. A caller over it gets **429** problem+json with `Retry-After`; every limited response
//! carries the IETF `RateLimit-Policy` and `RateLimit` headers.
//!
//! Callers are told apart by a key: the authenticated subject (or API key) for `key = "caller"`,
//! the client's address otherwise — the socket's, or the one a trusted proxy forwarded. IPv6
//! clients are counted per /64, the block one subscriber usually holds, so rotating addresses
//! within it gains nothing. Each limit tracks at most `max_keys` callers ([`BoundedStore`]).

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, MonotonicClock};
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use marty_config::{ClientIpHeader, IpRange, Limit, LimitKey, RateLimitConfig};

use super::Principal;
use crate::service::{Problem, ProblemType};
use crate::throttled_log::{Throttle, WINDOW};

const RATE_LIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATE_LIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// Every limit of a service, and how to find a request's client address.
#[derive(Debug)]
pub(crate) struct RateLimits {
    default: Option<Limiter>,
    /// By path as routed, then method.
    routes: HashMap<String, Vec<(Method, Limiter)>>,
    client_ip: ClientIp,
    /// Keys callers by a hash no client can predict (a flood of colliding keys gains nothing).
    hasher: RandomState,
}

impl RateLimits {
    pub(crate) fn new(config: &RateLimitConfig) -> Arc<Self> {
        let mut routes: HashMap<String, Vec<(Method, Limiter)>> = HashMap::new();
        for route in &config.routes {
            // The configuration checked the method.
            let Ok(method) = route.method.parse() else { continue };
            let name = format!("{} {}", route.method, route.path);
            routes.entry(route.path.clone()).or_default().push((method, Limiter::new(&name, &route.limit, config)));
        }
        Arc::new(RateLimits {
            default: config.default.as_ref().map(|limit| Limiter::new("default", limit, config)),
            routes,
            client_ip: ClientIp { trusted: config.trusted_proxies.clone(), header: config.client_ip_header },
            hasher: RandomState::new(),
        })
    }

    /// The limit of the route `path` answers for `method`.
    pub(crate) fn for_route(&self, method: &Method, path: Option<&str>) -> Option<&Limiter> {
        let own = path.and_then(|path| self.routes.get(path)?.iter().find(|(routed, _)| routed == method));
        own.map(|(_, limiter)| limiter).or(self.default.as_ref())
    }

    /// Counts one request of the caller (`None`: not authenticated) against `limiter`: the headers
    /// to add to its response, or the 429 that answers it.
    pub(crate) fn check(
        &self,
        limiter: &Limiter,
        caller: Option<&Principal>,
        request: &Request,
    ) -> Result<Allowance, OverLimit> {
        let peer = request.extensions().get::<ConnectInfo<SocketAddr>>();
        let mut hasher = self.hasher.build_hasher();
        match (limiter.key, caller) {
            (LimitKey::Caller, Some(caller)) => {
                hasher.write_u8(0);
                hasher.write(caller.subject().as_bytes());
            }
            _ => {
                hasher.write_u8(1);
                match peer.map(|ConnectInfo(peer)| self.client_ip.of(peer.ip(), request.headers())) {
                    Some(IpAddr::V4(v4)) => hasher.write(&v4.octets()),
                    Some(IpAddr::V6(v6)) => hasher.write(&v6.octets()[..8]),
                    // Not served by Marty's listener (a test's `oneshot`): one shared allowance.
                    None => {}
                }
            }
        }
        limiter.check(hasher.finish())
    }
}

/// The headers an allowed request's response gets.
#[derive(Debug)]
pub(crate) struct Allowance {
    policy: HeaderValue,
    state: HeaderValue,
}

impl Allowance {
    pub(crate) fn add_to(self, response: &mut Response) {
        let headers = response.headers_mut();
        headers.insert(RATE_LIMIT_POLICY, self.policy);
        headers.insert(RATE_LIMIT, self.state);
    }
}

/// One configured limit: its GCRA state per caller.
pub(crate) struct Limiter {
    key: LimitKey,
    /// `"<name>"`, the policy's name in the headers.
    name: String,
    burst: u32,
    /// How long one request's share takes to come back.
    replenish: Duration,
    policy: HeaderValue,
    gcra: RateLimiter<u64, SharedStore, MonotonicClock, StateInformationMiddleware>,
    /// The limiter's store, for the tests to count.
    #[cfg(test)]
    store: Arc<BoundedStore>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").field("name", &self.name).field("burst", &self.burst).finish_non_exhaustive()
    }
}

impl Limiter {
    fn new(name: &str, limit: &Limit, config: &RateLimitConfig) -> Self {
        let replenish = limit.period / limit.requests;
        let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
        let quota =
            Quota::with_period(replenish).unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX)).allow_burst(burst);
        // A whole burst takes `replenish * burst` to come back: the window of the IETF policy.
        let window = (replenish * limit.burst).as_secs().max(1);
        let name = format!("\"{}\"", name.replace(['"', '\\'], ""));
        let policy = HeaderValue::from_str(&format!("{name};q={};w={window}", limit.burst))
            .expect("a quoted name and numbers are a valid header value");
        let store = Arc::new(BoundedStore::new(config.max_keys, replenish * limit.burst, name.clone()));
        let gcra =
            RateLimiter::<_, _, _, NoOpMiddleware<Instant>>::new(quota, SharedStore(store.clone()), MonotonicClock)
                .with_middleware();
        Limiter {
            key: limit.key,
            name,
            burst: limit.burst,
            replenish,
            policy,
            gcra,
            #[cfg(test)]
            store,
        }
    }

    pub(crate) fn key(&self) -> LimitKey {
        self.key
    }

    fn check(&self, key: u64) -> Result<Allowance, OverLimit> {
        match self.gcra.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let full_in = self.replenish * self.burst.saturating_sub(remaining);
                Ok(Allowance { policy: self.policy.clone(), state: self.state(remaining, full_in) })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.gcra.clock().now());
                let allowance = Allowance { policy: self.policy.clone(), state: self.state(0, wait) };
                Err(OverLimit { retry_after: whole_seconds(wait), allowance })
            }
        }
    }

    /// `RateLimit: "<name>";r=<remaining>;t=<seconds until the allowance is whole again>`.
    fn state(&self, remaining: u32, full_in: Duration) -> HeaderValue {
        use std::fmt::Write;
        let mut value = String::with_capacity(self.name.len() + 24);
        let _ = write!(value, "{};r={remaining};t={}", self.name, whole_seconds(full_in));
        // Every limited response pays for this: the buffer becomes the header as it is, uncopied.
        HeaderValue::from_maybe_shared(axum::body::Bytes::from(value))
            .expect("a quoted name and numbers are a valid header value")
    }
}

fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// A request over its limit: answered 429 with when to retry.
#[derive(Debug)]
pub(crate) struct OverLimit {
    retry_after: u64,
    allowance: Allowance,
}

impl IntoResponse for OverLimit {
    fn into_response(self) -> Response {
        let mut response = Problem::new(StatusCode::TOO_MANY_REQUESTS, "too many requests: slow down and retry later")
            .with_type(ProblemType::TooManyRequests.uri())
            .retry_after(self.retry_after)
            .into_response();
        self.allowance.add_to(&mut response);
        response
    }
}

/// Where a request comes from: the socket's address, or the client a trusted proxy names.
#[derive(Debug)]
pub(super) struct ClientIp {
    trusted: Vec<IpRange>,
    header: ClientIpHeader,
}

impl ClientIp {
    fn is_trusted(&self, address: IpAddr) -> bool {
        self.trusted.iter().any(|range| range.contains(address))
    }

    /// The client's address: walking the forwarding chain from the socket back, the first hop that
    /// is not a trusted proxy (what an untrusted hop claims about the ones before it is ignored).
    pub(super) fn of(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let name = match self.header {
            ClientIpHeader::XForwardedFor => "x-forwarded-for",
            ClientIpHeader::Forwarded => "forwarded",
            ClientIpHeader::XRealIp => "x-real-ip",
        };
        let hops: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let parsed = match self.header {
                ClientIpHeader::Forwarded => forwarded_for(hop),
                _ => hop.trim().parse().ok(),
            };
            // An address that does not parse (`unknown`, obfuscated): the last trusted hop saw
            // that much, and no more is known.
            let Some(address) = parsed else { return client };
            client = address;
            if !self.is_trusted(address) {
                break;
            }
        }
        client
    }
}

/// A client address resolver trusting `10.0.0.0/8`, reading `header`.
#[cfg(test)]
pub(super) fn client_ip_for_tests(header: ClientIpHeader) -> ClientIp {
    ClientIp { trusted: vec![IpRange::parse("10.0.0.0/8").expect("a range")], header }
}

/// The address in one RFC 7239 element's `for=` (`for=192.0.2.60`, `for="[2001:db8::1]:4711"`).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.eq_ignore_ascii_case("for").then(|| value.trim().trim_matches('"'))
    })?;
    if let Some(v6) = value.strip_prefix('[') {
        return v6.split(']').next()?.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    value.split(':').next()?.parse().ok()
}

/// GCRA state (each caller's next allowed time, nanoseconds on the limiter's clock) for at most
/// `max_keys` callers, in shards that each lock briefly. A caller whose state is older than a whole
/// burst's replenishment is indistinguishable from a new one, so it may be forgotten; when a shard
/// is full of callers that are not, new callers share one state until room is made — under a flood
/// of distinct keys, the newcomers are limited together rather than memory growing without bound.
pub(crate) struct BoundedStore {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    /// How long after its last request a caller's state is spent.
    forget_after: Duration,
    /// The limiter's clock started with the store, give or take the nanoseconds between.
    started: Instant,
    /// The state newcomers share while their shard is full.
    overflow: Mutex<Option<u64>>,
    overflowing: Throttle,
    name: String,
}

struct Shard {
    states: HashMap<u64, u64, BuildHasherDefault<KeyHasher>>,
    swept_at: Instant,
}

const SHARDS: usize = 16;

impl BoundedStore {
    fn new(max_keys: usize, forget_after: Duration, name: String) -> Self {
        let per_shard = max_keys.div_ceil(SHARDS).max(1);
        let now = Instant::now();
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard { states: HashMap::default(), swept_at: now })).collect();
        BoundedStore {
            shards,
            per_shard,
            forget_after,
            started: now,
            overflow: Mutex::new(None),
            overflowing: Throttle::new(WINDOW),
            name,
        }
    }

    /// Forgets the spent callers of a full shard, at most once a second (a sweep reads the whole
    /// shard): whether there is room now.
    fn make_room(&self, shard: &mut Shard) -> bool {
        let now = Instant::now();
        if now.duration_since(shard.swept_at) >= Duration::from_secs(1) {
            shard.swept_at = now;
            // One second of slack for the clocks' different starts.
            let spent_before =
                now.duration_since(self.started).saturating_sub(self.forget_after + Duration::from_secs(1));
            let spent_before = u64::try_from(spent_before.as_nanos()).unwrap_or(u64::MAX);
            shard.states.retain(|_, next_allowed| *next_allowed > spent_before);
        }
        shard.states.len() < self.per_shard
    }
}

/// The store as the limiter holds it, shared with [`Limiter`] so the tests can count it.
struct SharedStore(Arc<BoundedStore>);

impl StateStore for SharedStore {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, decide: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, decide)
    }
}

impl BoundedStore {
    fn measure_and_replace<T, F, E>(&self, key: &u64, decide: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let index = (*key >> 60) as usize % SHARDS;
        let mut shard = self.shards[index].lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(state) = shard.states.get_mut(key) {
            let (outcome, next) = decide(Some(Nanos::from(*state)))?;
            *state = next.as_u64();
            return Ok(outcome);
        }
        if shard.states.len() < self.per_shard || self.make_room(&mut shard) {
            let (outcome, next) = decide(None)?;
            shard.states.insert(*key, next.as_u64());
            return Ok(outcome);
        }
        drop(shard);
        if let Some(times) = self.overflowing.hit() {
            tracing::warn!(
                target: "marty::security",
                limit = %self.name,
                times,
                "rate limit tracks its most callers: new callers share one allowance until some go quiet"
            );
        }
        let mut overflow = self.overflow.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (outcome, next) = decide(overflow.map(Nanos::from))?;
        *overflow = Some(next.as_u64());
        Ok(outcome)
    }
}

/// The keys are already hashes (see [`RateLimits::check`]): the map uses them as they are.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 << 8) | u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> RateLimitConfig {
        marty_config::Config::parse(text, "marty.toml").unwrap().rate_limit.unwrap()
    }

    #[test]
    fn a_flood_of_distinct_callers_keeps_memory_bounded() {
        let config = config("[rate_limit]\nmax_keys = 160\ndefault = { limit = \"1/h\" }\n");
        let limits = RateLimits::new(&config);
        let limiter = limits.default.as_ref().unwrap();
        for key in 0..10_000u64 {
            let _ = limiter.check(key.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        let tracked: usize = limiter.store.shards.iter().map(|shard| shard.lock().unwrap().states.len()).sum();
        assert!(tracked <= 160, "{tracked} callers tracked");
        // Tracked callers keep their own state: the first one is still over its limit.
        assert!(limiter.check(0).is_err());
    }

    #[test]
    fn forwarded_addresses_are_believed_from_trusted_proxies_only() {
        let trusted =
            ClientIp { trusted: vec![IpRange::parse("10.0.0.0/8").unwrap()], header: ClientIpHeader::XForwardedFor };
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.7, 203.0.113.9, 10.0.0.3"));
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(trusted.of(proxy, &headers), "203.0.113.9".parse::<IpAddr>().unwrap());
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(trusted.of(stranger, &headers), stranger);
        let forwarded = ClientIp { header: ClientIpHeader::Forwarded, ..trusted };
        headers.insert("forwarded", HeaderValue::from_static("for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.3"));
        assert_eq!(forwarded.of(proxy, &headers), "2001:db8::1".parse::<IpAddr>().unwrap());
        headers.insert("forwarded", HeaderValue::from_static("for=unknown, for=10.0.0.3"));
        assert_eq!(forwarded.of(proxy, &headers), "10.0.0.3".parse::<IpAddr>().unwrap());
    }
}
