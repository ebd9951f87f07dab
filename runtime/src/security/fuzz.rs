//! Property tests over what clients control: the `Authorization` and API-key headers, the tokens
//! in them, forwarding headers and client certificates. Whatever arrives, the answer is a refusal
//! (or no caller), never a panic. Bounded: a few thousand cases per property, in the unit tests.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use axum::http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

use super::authenticator::{Authenticator, Denial, Unproven};
use super::Principal;

/// An authenticator whose issuer is unreachable (its keys never fetched) and whose one API key
/// (`ord_clerk_5b1e2c`, by its SHA-256) is in a file of the test's.
fn authenticator() -> &'static Authenticator {
    static AUTHENTICATOR: OnceLock<Arc<Authenticator>> = OnceLock::new();
    AUTHENTICATOR.get_or_init(|| {
        let keys = std::env::temp_dir().join(format!("marty-fuzz-keys-{}.toml", std::process::id()));
        let sha256 = "4c6747da4a0b4587a6381732cc0a6271fa0d86fc68c1c29796a736049bbacb27";
        std::fs::write(&keys, format!("[keys.batch]\nsha256 = \"{sha256}\"\n")).unwrap();
        let text = format!(
            "[security]\n[security.jwt]\nissuer = \"https://id.example\"\naudiences = [\"orders\"]\n\
             jwks_url = \"http://127.0.0.1:9/certs\"\n[security.api_keys]\nfile = \"{}\"\n",
            keys.display()
        );
        let security = marty_config::Config::parse(&text, "marty.toml").unwrap().security.unwrap();
        let authenticator = Authenticator::from_config(&security, "marty.toml").unwrap();
        let _ = std::fs::remove_file(&keys);
        authenticator
    })
}

/// What the guard makes of `headers`: authenticated at once, or after fetching the keys when the
/// token's key is not cached.
fn authenticate(headers: &HeaderMap) -> Result<Option<Principal>, Denial> {
    let settled = |outcome: Result<Option<Principal>, Unproven>| match outcome {
        Ok(caller) => Ok(caller),
        Err(Unproven::Denied(denial)) => Err(denial),
        Err(Unproven::KeyNotCached) => panic!("asked for the keys again after fetching them"),
    };
    match authenticator().authenticate(headers, None, false) {
        Err(Unproven::KeyNotCached) => {
            runtime().block_on(authenticator().refetch_keys());
            settled(authenticator().authenticate(headers, None, true))
        }
        outcome => settled(outcome),
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap())
}

fn cases() -> ProptestConfig {
    ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() }
}

/// A base64url segment, as a JWT is made of.
fn segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_=-]{0,120}"
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn any_authorization_header_is_refused_or_ignored(value in proptest::collection::vec(any::<u8>(), 0..600)) {
        let Ok(value) = HeaderValue::from_bytes(&value) else { return Ok(()) };
        let mut headers = HeaderMap::new();
        headers.insert("authorization", value);
        let outcome = authenticate(&headers);
        prop_assert!(matches!(outcome, Err(Denial::Invalid | Denial::Unavailable)), "{outcome:?}");
    }

    #[test]
    fn tokens_shaped_like_jwts_never_authenticate(header in segment(), claims in segment(), signature in segment()) {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("Bearer {header}.{claims}.{signature}")).unwrap();
        headers.insert("authorization", value);
        let outcome = authenticate(&headers);
        prop_assert!(outcome.is_err(), "{outcome:?}");
    }

    #[test]
    fn any_api_key_but_the_known_one_is_refused(key in proptest::collection::vec(any::<u8>(), 0..200)) {
        let Ok(value) = HeaderValue::from_bytes(&key) else { return Ok(()) };
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", value);
        let outcome = authenticate(&headers);
        prop_assert_eq!(outcome.map(|caller| caller.is_some()), Err(Denial::Invalid));
    }

    #[test]
    fn forwarding_headers_name_the_peer_or_an_address_they_hold(chain in "[0-9a-fA-F:.,; =\\[\\]\"forFOR_-]{0,200}") {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        for header in [marty_config::ClientIpHeader::XForwardedFor, marty_config::ClientIpHeader::Forwarded, marty_config::ClientIpHeader::XRealIp] {
            let client_ip = super::rate_limit::client_ip_for_tests(header);
            let mut headers = HeaderMap::new();
            let Ok(value) = HeaderValue::from_str(&chain) else { return Ok(()) };
            for name in ["x-forwarded-for", "forwarded", "x-real-ip"] {
                headers.insert(name, value.clone());
            }
            let client = client_ip.of(peer, &headers);
            prop_assert!(client == peer || !chain.trim().is_empty(), "{client} from nothing");
        }
    }

    #[test]
    fn any_bytes_as_a_client_certificate_prove_no_identity(der in proptest::collection::vec(any::<u8>(), 0..2_000)) {
        prop_assert_eq!(super::mtls::identity(&der), None);
    }
}
