//! `[rate_limit]`: how many requests a caller may make, per route and by default.

use std::net::IpAddr;
use std::time::Duration;

use crate::read::{join, Reader, Table};
use crate::Origin;

/// `[rate_limit]`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// The limit of every route without one of its own; none: only the routes listed are limited.
    pub default: Option<Limit>,
    /// `[rate_limit.routes]`: limits of their own, by route (`"POST /orders"`).
    pub routes: Vec<RouteLimit>,
    /// How many callers each limit tracks at most (default 100,000): beyond it, new callers share
    /// one allowance until tracked ones go quiet, so a flood of distinct keys cannot exhaust memory.
    pub max_keys: usize,
    /// The peers whose forwarding header is believed (addresses or CIDR ranges); empty: the client's
    /// address is the socket's.
    pub trusted_proxies: Vec<IpRange>,
    /// The forwarding header a trusted proxy sets (default `x-forwarded-for`).
    pub client_ip_header: ClientIpHeader,
}

/// One rate: `requests` per `period`, with bursts of up to `burst` requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Requests allowed per period.
    pub requests: u32,
    /// The period (`1s`, `1m` or `1h`, from `"10/s"`).
    pub period: Duration,
    /// How many requests may come at once (default: `requests`).
    pub burst: u32,
    /// Whose requests are counted together.
    pub key: LimitKey,
}

/// Whose requests one allowance counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKey {
    /// The authenticated caller (token subject or API key), else the client's address (`"caller"`).
    Caller,
    /// The client's address, before authentication (`"ip"`).
    Ip,
}

/// A route's own limit.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteLimit {
    /// The HTTP method, upper case.
    pub method: String,
    /// The path as the service routes it (`/orders/{id}`).
    pub path: String,
    /// Where the route is named, for errors.
    pub origin: Origin,
    /// Its limit.
    pub limit: Limit,
}

impl RouteLimit {
    /// The route as named: `POST /orders`.
    pub fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

impl RateLimitConfig {
    /// The route limits naming a route that is not among `served` (`"POST /orders"`, paths as
    /// routed): what the macros report when the service compiles and the runtime at startup.
    pub fn unknown_routes<'a>(&'a self, served: &[String]) -> Vec<&'a RouteLimit> {
        self.routes.iter().filter(|route| !served.contains(&route.name())).collect()
    }
}

/// An address, or a range of them in CIDR notation (`10.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    /// The first address of the range.
    pub network: IpAddr,
    /// How many leading bits must match.
    pub prefix: u8,
}

impl IpRange {
    /// `10.0.0.0/8`, `fd00::/8` or a single address.
    pub fn parse(text: &str) -> Option<IpRange> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix.parse::<u8>().ok()?)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().ok()?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(bits);
        (prefix <= bits).then_some(IpRange { network, prefix })
    }

    /// Whether `address` is in the range (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        let (network, address, bits) = match (self.network, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => (u32::from(network) as u128, u32::from(address) as u128, 32),
            (IpAddr::V6(network), IpAddr::V6(address)) => (u128::from(network), u128::from(address), 128),
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        shift >= bits || (network >> shift) == (address >> shift)
    }
}

/// The header a trusted proxy names the client in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for=proxy1`.
    Forwarded,
    /// `X-Real-IP: client` (nginx).
    XRealIp,
}

const RATE_LIMIT_KEYS: &[&str] = &["default", "routes", "max_keys", "trusted_proxies", "client_ip_header"];
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

pub(crate) fn read_rate_limit(reader: &mut Reader<'_>, root: &Table<'_>) -> Option<RateLimitConfig> {
    let table = reader.table(root, "rate_limit")?;
    reader.deny_unknown_keys(&table, RATE_LIMIT_KEYS);
    let default = reader.table(&table, "default").and_then(|limit| read_limit(reader, &limit));
    let mut routes = Vec::new();
    if let Some(listed) = reader.table(&table, "routes") {
        for (route, node) in reader.named_entries(&listed) {
            let path = join(&listed.path, &format!("\"{route}\""));
            let Some((method, route_path)) = route_name(route) else {
                let help = Some(
                    "name the route as `\"POST /orders\"`: an upper-case method, a space, the path as routed"
                        .to_owned(),
                );
                reader.error(&node.origin, &path, format!("`{route}` is not a route"), help);
                continue;
            };
            let Some(limit) = reader.as_table(node, path).and_then(|limit| read_limit(reader, &limit)) else {
                continue;
            };
            routes.push(RouteLimit { method, path: route_path, origin: node.origin.clone(), limit });
        }
    }
    let max_keys = reader.integer(&table, "max_keys", 100, 100_000_000).unwrap_or(100_000) as usize;
    let trusted_proxies = reader
        .strings(&table, "trusted_proxies", "[\"10.0.0.0/8\"]")
        .unwrap_or_default()
        .iter()
        .filter_map(|text| {
            let range = IpRange::parse(text);
            if range.is_none() {
                let origin = reader.origin_of(&table, "trusted_proxies").clone();
                let help = Some("write an address (`10.0.0.7`) or a CIDR range (`10.0.0.0/8`, `fd00::/8`)".to_owned());
                reader.error(
                    &origin,
                    "rate_limit.trusted_proxies",
                    format!("`{text}` is not an address or range"),
                    help,
                );
            }
            range
        })
        .collect();
    let client_ip_header =
        match reader.choice(&table, "client_ip_header", &["x-forwarded-for", "forwarded", "x-real-ip"]).as_deref() {
            Some("forwarded") => ClientIpHeader::Forwarded,
            Some("x-real-ip") => ClientIpHeader::XRealIp,
            _ => ClientIpHeader::XForwardedFor,
        };
    Some(RateLimitConfig { default, routes, max_keys, trusted_proxies, client_ip_header })
}

/// `"POST /orders"` as method and path.
fn route_name(route: &str) -> Option<(String, String)> {
    let (method, path) = route.split_once(' ')?;
    (METHODS.contains(&method) && path.starts_with('/') && !path.contains(char::is_whitespace))
        .then(|| (method.to_owned(), path.to_owned()))
}

/// `{ limit = "10/s", burst = 20, key = "caller" }`.
fn read_limit(reader: &mut Reader<'_>, table: &Table<'_>) -> Option<Limit> {
    reader.deny_unknown_keys(table, &["limit", "burst", "key"]);
    let key = match reader.choice(table, "key", &["caller", "ip"]).as_deref() {
        Some("ip") => LimitKey::Ip,
        _ => LimitKey::Caller,
    };
    let burst = reader.integer(table, "burst", 1, 1_000_000).map(|burst| burst as u32);
    let key_path = join(&table.path, "limit");
    let Some(text) = reader.string(table, "limit") else {
        if !reader.has(table, "limit") {
            let origin = reader.origin_of(table, "limit").clone();
            reader.error(
                &origin,
                &key_path,
                "missing key",
                Some("add `limit = \"10/s\"` (per `s`, `m` or `h`)".to_owned()),
            );
        }
        return None;
    };
    let parsed = text.split_once('/').and_then(|(requests, per)| {
        let requests = requests.trim().parse::<u32>().ok().filter(|requests| (1..=1_000_000).contains(requests))?;
        let period = match per.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return None,
        };
        Some((requests, period))
    });
    let Some((requests, period)) = parsed else {
        let origin = reader.origin_of(table, "limit").clone();
        let help = Some("write requests per second, minute or hour: `\"10/s\"`, `\"600/m\"`, `\"5000/h\"`".to_owned());
        reader.error(&origin, &key_path, format!("`{text}` is not a rate"), help);
        return None;
    };
    Some(Limit { requests, period, burst: burst.unwrap_or(requests), key })
}

#[cfg(test)]
mod tests {
    use super::{IpRange, LimitKey};
    use crate::Config;

    #[test]
    fn limits_are_read_per_route_and_by_default() {
        let text = "[rate_limit]\ndefault = { limit = \"100/s\" }\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n\
                    [rate_limit.routes]\n\"POST /orders\" = { limit = \"10/m\", burst = 3, key = \"ip\" }\n";
        let config = Config::parse(text, "marty.toml").unwrap().rate_limit.unwrap();
        let default = config.default.unwrap();
        assert_eq!((default.requests, default.burst, default.key), (100, 100, LimitKey::Caller));
        let route = &config.routes[0];
        assert_eq!((route.method.as_str(), route.path.as_str()), ("POST", "/orders"));
        assert_eq!((route.limit.requests, route.limit.period.as_secs(), route.limit.burst), (10, 60, 3));
        assert_eq!(route.limit.key, LimitKey::Ip);
        assert_eq!(config.trusted_proxies.len(), 2);
    }

    #[test]
    fn a_bad_rate_route_or_proxy_is_an_error_with_the_fix() {
        let errors = |text: &str| Config::parse(text, "marty.toml").unwrap_err().to_string();
        let rate = errors("[rate_limit]\ndefault = { limit = \"10 per second\" }\n");
        assert!(rate.contains("rate_limit.default.limit") && rate.contains("\"10/s\""), "{rate}");
        let route = errors("[rate_limit.routes]\n\"post /orders\" = { limit = \"1/s\" }\n");
        assert!(route.contains("is not a route") && route.contains("\"POST /orders\""), "{route}");
        let proxy = errors("[rate_limit]\ntrusted_proxies = [\"10.0.0.0/40\"]\n");
        assert!(proxy.contains("rate_limit.trusted_proxies") && proxy.contains("CIDR"), "{proxy}");
    }

    #[test]
    fn ranges_contain_their_addresses_only() {
        let range = IpRange::parse("10.1.0.0/16").unwrap();
        assert!(range.contains("10.1.200.3".parse().unwrap()));
        assert!(range.contains("::ffff:10.1.0.1".parse().unwrap()));
        assert!(!range.contains("10.2.0.1".parse().unwrap()));
        assert!(IpRange::parse("0.0.0.0/0").unwrap().contains("192.0.2.1".parse().unwrap()));
        assert!(IpRange::parse("fd00::/8").unwrap().contains("fd12::1".parse().unwrap()));
        assert!(IpRange::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(IpRange::parse("10.0.0.1/33").is_none());
    }
}
