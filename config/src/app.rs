//! `[app]`: the application's own settings, free-form in `marty.toml` and read into the user's serde
//! type at startup, with the same file/line/key errors as Marty's own keys. Marty checks only that
//! `[app]` is a table when the code compiles: the type it must fit is known at startup.

use serde::de::DeserializeOwned;

use crate::error::{ConfigError, ConfigErrors, Origin};
use crate::tree::{Node, Value};

/// The `[app]` table as read: after `MARTY__APP__...` overrides and `${VAR}` expansion at startup.
#[derive(Debug, Clone, Default)]
pub struct AppSettings {
    file: String,
    root: Option<Node>,
}

impl PartialEq for AppSettings {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

impl AppSettings {
    pub(crate) fn new(file: &str, root: Option<Node>) -> Self {
        AppSettings { file: file.to_owned(), root }
    }

    /// Whether the configuration has an `[app]` table.
    pub fn is_present(&self) -> bool {
        self.root.is_some()
    }

    /// `[app]` read into `T`. A value `T` does not accept is an error naming the file, the line (or
    /// the overriding variable) and the key, like every other configuration error; a missing
    /// `[app]` reads as an empty table, so a `T` whose fields all have defaults needs none.
    pub fn get<T: DeserializeOwned>(&self) -> Result<T, ConfigErrors> {
        serde_path_to_error::deserialize(self.json()).map_err(|error| {
            let path: Vec<String> = error
                .path()
                .iter()
                .filter_map(|segment| match segment {
                    serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                    serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                    _ => None,
                })
                .collect();
            let origin = self.root.as_ref().map_or(Origin::Missing, |root| origin_of(root, &path));
            let key = std::iter::once("app".to_owned()).chain(path).collect::<Vec<_>>().join(".");
            let help = (!self.is_present())
                .then(|| "add an `[app]` table to the configuration with the settings the service reads".to_owned());
            ConfigErrors(vec![ConfigError {
                file: self.file.clone(),
                origin,
                key,
                problem: error.inner().to_string(),
                help,
            }])
        })
    }

    fn json(&self) -> serde_json::Value {
        self.root.as_ref().map_or_else(|| serde_json::Value::Object(Default::default()), json_of)
    }
}

fn json_of(node: &Node) -> serde_json::Value {
    match &node.value {
        Value::Table(entries) => entries.iter().map(|(key, node)| (key.clone(), json_of(node))).collect(),
        Value::Array(items) => items.iter().map(json_of).collect(),
        Value::String(text) => text.clone().into(),
        Value::Integer(number) => (*number).into(),
        Value::Float(number) => (*number).into(),
        Value::Bool(flag) => (*flag).into(),
        // A datetime: serde types read it as text.
        Value::Other(_) => serde_json::Value::Null,
    }
}

/// Where the deepest existing value on `path` came from.
fn origin_of(node: &Node, path: &[String]) -> Origin {
    let Some((first, rest)) = path.split_first() else { return node.origin.clone() };
    let child = match &node.value {
        Value::Table(entries) => entries.iter().find(|(key, _)| key == first).map(|(_, child)| child),
        Value::Array(items) => first.parse::<usize>().ok().and_then(|index| items.get(index)),
        _ => None,
    };
    child.map_or_else(|| node.origin.clone(), |child| origin_of(child, rest))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use crate::{Config, Environment, Origin};

    #[derive(Debug, Deserialize, PartialEq)]
    struct Settings {
        currency: String,
        limits: Limits,
        #[serde(default)]
        regions: Vec<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Limits {
        max_items: u16,
    }

    const FILE: &str =
        "[app]\ncurrency = \"${CURRENCY:-EUR}\"\nregions = [\"eu\", \"us\"]\n\n[app.limits]\nmax_items = 70000\n";

    #[test]
    fn a_value_the_type_refuses_is_an_error_on_its_line_and_key() {
        let config = Config::parse_at_startup(FILE, "marty.toml", &Environment::default()).unwrap();
        let errors = config.app.get::<Settings>().unwrap_err();
        let error = &errors.0[0];
        assert_eq!((error.origin.clone(), error.key.as_str()), (Origin::Line(6), "app.limits.max_items"));
        assert!(error.to_string().starts_with("marty.toml:6: key `app.limits.max_items`: invalid value"), "{error}");
    }

    #[test]
    fn settings_read_with_defaults_and_overrides() {
        let env = Environment::from_pairs([("MARTY__APP__LIMITS__MAX_ITEMS", "50"), ("CURRENCY", "CHF")]);
        let config = Config::parse_at_startup(FILE, "marty.toml", &env).unwrap();
        let settings = config.app.get::<Settings>().unwrap();
        let regions = vec!["eu".to_owned(), "us".to_owned()];
        assert_eq!(settings, Settings { currency: "CHF".into(), limits: Limits { max_items: 50 }, regions });
        let config = Config::parse_at_startup(FILE, "marty.toml", &Environment::default()).unwrap();
        assert_eq!(config.app.get::<serde_json::Value>().unwrap()["currency"], "EUR");
    }

    #[test]
    fn a_missing_field_names_its_table_and_a_missing_app_says_to_add_one() {
        let config = Config::parse_at_startup("[app.limits]\nmax_items = 3\n", "marty.toml", &Environment::default());
        let error = config.unwrap().app.get::<Settings>().unwrap_err().0.remove(0);
        assert_eq!((error.key.as_str(), error.problem.as_str()), ("app", "missing field `currency`"));
        let error = Config::parse("", "marty.toml").unwrap().app.get::<Settings>().unwrap_err().0.remove(0);
        assert_eq!(error.origin, Origin::Missing);
        assert!(error.help.unwrap().contains("add an `[app]` table"));
    }
}
