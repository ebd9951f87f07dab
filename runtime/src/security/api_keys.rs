//! API keys for machine clients: a header carrying a key, known only by its SHA-256 (read at
//! startup from `[security.api_keys] file` or `env`), each granting its own roles and scopes. A
//! presented key is hashed and compared with every known hash in constant time.

use std::path::Path;

use axum::http::HeaderName;
use marty_config::{ApiKeyEntry, ApiKeysConfig, ApiKeysSource, ConfigError, ConfigErrors, Origin, SecurityConfig};

use super::Principal;

pub(super) struct ApiKeys {
    header: HeaderName,
    keys: Vec<ApiKeyEntry>,
}

impl ApiKeys {
    /// The keys `config` points at; `file` is the configuration, as errors name it.
    pub(super) fn load(config: &ApiKeysConfig, security: &SecurityConfig, file: &str) -> Result<Self, ConfigErrors> {
        let unreadable = |key: &str, problem: String, help: &str| {
            ConfigErrors(vec![ConfigError {
                file: file.to_owned(),
                origin: Origin::Missing,
                key: format!("security.api_keys.{key}"),
                problem,
                help: Some(help.to_owned()),
            }])
        };
        let (text, name) = match &config.source {
            ApiKeysSource::File(path) => {
                let text = std::fs::read_to_string(Path::new(path)).map_err(|error| {
                    unreadable(
                        "file",
                        format!("cannot read `{path}`: {error}"),
                        "mount the API keys secret there, or point `file` at it",
                    )
                })?;
                (text, path.clone())
            }
            ApiKeysSource::Env(variable) => {
                let text = std::env::var(variable).map_err(|_| {
                    unreadable("env", format!("`{variable}` is not set"), "set it to the API keys file's text")
                })?;
                (text, format!("${variable}"))
            }
        };
        let keys = marty_config::parse_api_keys(&text, &name, security)?;
        let header = HeaderName::from_bytes(config.header.as_bytes()).map_err(|_| {
            unreadable("header", format!("`{}` is not a header name", config.header), "write e.g. `x-api-key`")
        })?;
        Ok(ApiKeys { header, keys })
    }

    pub(super) fn header(&self) -> &HeaderName {
        &self.header
    }

    /// The client whose key `presented` is.
    pub(super) fn check(&self, presented: &[u8]) -> Option<Principal> {
        let digest = ring::digest::digest(&ring::digest::SHA256, presented);
        // Every known hash is compared, whichever matches: the time taken says nothing of which.
        let mut found = None;
        for key in &self.keys {
            if equal_in_constant_time(digest.as_ref(), &key.sha256) {
                found = Some(key);
            }
        }
        let key = found?;
        let claims = serde_json::json!({ "api_key": key.name });
        Some(Principal::new(format!("api-key:{}", key.name), key.roles.clone(), key.scopes.clone(), claims))
    }
}

/// Whether `a` and `b` are equal, in a time that depends only on their lengths.
pub(super) fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::equal_in_constant_time;

    #[test]
    fn equality_is_byte_for_byte() {
        assert!(equal_in_constant_time(b"abc", b"abc"));
        assert!(!equal_in_constant_time(b"abc", b"abd"));
        assert!(!equal_in_constant_time(b"abc", b"ab"));
    }
}
