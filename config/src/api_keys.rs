//! The API keys file: each machine client's key, stored only as its SHA-256, with the roles and
//! scopes it grants. Named by `[security.api_keys] file` (or held in the variable `env` names, for
//! a Kubernetes secret mounted as one), read at startup.
//!
//! ```toml
//! [keys.billing-batch]
//! sha256 = "3f0a…"          # `printf %s "$KEY" | sha256sum`: the key itself is never stored
//! roles = ["clerk"]
//! scopes = ["orders:read"]
//! ```

use crate::error::{ConfigError, ConfigErrors, Origin};
use crate::read::{join, Reader};
use crate::security::SecurityConfig;

/// One client's key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApiKeyEntry {
    /// The client's name: the caller's subject (`api-key:<name>`).
    pub name: String,
    /// The SHA-256 of the key.
    pub sha256: [u8; 32],
    /// The roles it grants (declared under `[security] roles`).
    pub roles: Vec<String>,
    /// The scopes it grants (declared under `[security] scopes`).
    pub scopes: Vec<String>,
}

/// Reads an API keys file; `file` is how errors name it. Every role and scope must be one
/// `security` declares.
pub fn parse_api_keys(text: &str, file: &str, security: &SecurityConfig) -> Result<Vec<ApiKeyEntry>, ConfigErrors> {
    let root = crate::tree::parse_toml(text, file).map_err(|error| ConfigErrors(vec![error]))?;
    let mut reader = Reader::new(file, None);
    let table = reader.root(&root);
    reader.deny_unknown_keys(&table, &["keys"]);
    let mut entries = Vec::new();
    if let Some(keys) = reader.table(&table, "keys") {
        for (name, node) in reader.named_entries(&keys) {
            let Some(key) = reader.as_table(node, join("keys", name)) else { continue };
            reader.deny_unknown_keys(&key, &["sha256", "roles", "scopes"]);
            let sha256 = reader.string(&key, "sha256");
            let digest = sha256.as_deref().and_then(parse_sha256);
            if digest.is_none() {
                let origin = reader.origin_of(&key, "sha256").clone();
                let problem = match sha256 {
                    None => "missing key".to_owned(),
                    Some(_) => "not a SHA-256: expected 64 hexadecimal digits".to_owned(),
                };
                let help = Some("write the key's hash, never the key: `printf %s \"$KEY\" | sha256sum`".to_owned());
                reader.error(&origin, &join(&key.path, "sha256"), problem, help);
            }
            let roles = reader.strings(&key, "roles", "[\"clerk\"]").unwrap_or_default();
            let scopes = reader.strings(&key, "scopes", "[\"orders:read\"]").unwrap_or_default();
            for (kind, granted, declared) in [("roles", &roles, &security.roles), ("scopes", &scopes, &security.scopes)]
            {
                for missing in granted.iter().filter(|name| !declared.contains(name)) {
                    let origin = reader.origin_of(&key, kind).clone();
                    let help = Some(format!("declare it under `[security] {kind}` in marty.toml, or remove it here"));
                    reader.error(&origin, &join(&key.path, kind), format!("`{missing}` is not declared"), help);
                }
            }
            if let Some(sha256) = digest {
                entries.push(ApiKeyEntry { name: name.clone(), sha256, roles, scopes });
            }
        }
    }
    if entries.is_empty() && reader.errors.is_empty() {
        let help = Some("add a client: `[keys.billing-batch]` with `sha256` and `roles`".to_owned());
        reader.error(&Origin::Line(1), "keys", "no API key: no client could authenticate with one", help);
    }
    let errors: Vec<ConfigError> = std::mem::take(&mut reader.errors);
    ConfigErrors::from_found(errors).map(|()| entries)
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (index, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn security() -> SecurityConfig {
        let text = "[security]\ndefault = \"public\"\nroles = [\"clerk\"]\nscopes = [\"orders:read\"]\n";
        Config::parse(text, "marty.toml").unwrap().security.unwrap()
    }

    const HASH: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn keys_are_read_as_hashes_with_their_grants() {
        let text = format!("[keys.batch]\nsha256 = \"{HASH}\"\nroles = [\"clerk\"]\n");
        let keys = parse_api_keys(&text, "keys.toml", &security()).unwrap();
        assert_eq!(keys[0].name, "batch");
        assert_eq!(keys[0].sha256[..2], [0x2c, 0xf2]);
        assert_eq!(keys[0].roles, ["clerk"]);
    }

    #[test]
    fn a_key_in_clear_or_an_undeclared_role_is_an_error_at_its_line() {
        let text = "[keys.batch]\nsha256 = \"hello\"\nroles = [\"admin\"]\n";
        let error = parse_api_keys(text, "keys.toml", &security()).unwrap_err().to_string();
        assert!(error.contains("keys.toml:2") && error.contains("keys.batch.sha256"), "{error}");
        assert!(error.contains("keys.toml:3") && error.contains("`admin` is not declared"), "{error}");
        let empty = parse_api_keys("", "keys.toml", &security()).unwrap_err().to_string();
        assert!(empty.contains("no API key"), "{empty}");
    }
}
