//! The configuration as a tree of values that remember where they came from (a file line or an
//! environment variable), so validation can name the origin of every mistake. This module owns the
//! TOML syntax and the `MARTY__` override rules; it knows nothing of the schema.

use crate::error::{ConfigError, Origin};

/// A value and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) value: Value,
    pub(crate) origin: Origin,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    Table(Vec<(String, Node)>),
    String(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
    /// Only `[app]` reads arrays; Marty's own keys never take one.
    Array(Vec<Node>),
    /// A TOML type the schema never uses (datetimes, arrays of tables); named for the error message.
    Other(&'static str),
}

impl Value {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::Table(_) => "a table",
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Bool(_) => "a boolean",
            Value::Array(_) => "an array",
            Value::Other(name) => name,
        }
    }
}

/// Parses TOML text into a tree; a syntax error names the file and line.
pub(crate) fn parse_toml(text: &str, file: &str) -> Result<Node, ConfigError> {
    let document = toml_edit::Document::parse(text).map_err(|error| {
        let line = error.span().map_or(1, |span| line_of(text, span.start));
        ConfigError {
            file: file.to_owned(),
            origin: Origin::Line(line),
            key: String::new(),
            problem: format!("invalid TOML: {}", error.message().trim_end_matches('.')),
            help: None,
        }
    })?;
    Ok(Node { value: table_from_toml(text, document.as_table()), origin: Origin::Line(1) })
}

fn table_from_toml(text: &str, table: &toml_edit::Table) -> Value {
    Value::Table(
        table
            .iter()
            .map(|(key, item)| {
                let span = table.key(key).and_then(toml_edit::Key::span).or_else(|| item.span());
                entry(text, key, span, value_from_item(text, item))
            })
            .collect(),
    )
}

fn entry(text: &str, key: &str, span: Option<std::ops::Range<usize>>, value: Value) -> (String, Node) {
    let origin = Origin::Line(span.map_or(1, |span| line_of(text, span.start)));
    (key.to_owned(), Node { value, origin })
}

fn value_from_item(text: &str, item: &toml_edit::Item) -> Value {
    match item {
        toml_edit::Item::Table(table) => table_from_toml(text, table),
        toml_edit::Item::Value(value) => value_from_toml(text, value),
        toml_edit::Item::ArrayOfTables(_) => Value::Other("an array of tables"),
        toml_edit::Item::None => Value::Other("nothing"),
    }
}

fn value_from_toml(text: &str, value: &toml_edit::Value) -> Value {
    match value {
        toml_edit::Value::String(s) => Value::String(s.value().clone()),
        toml_edit::Value::Integer(i) => Value::Integer(*i.value()),
        toml_edit::Value::Float(f) => Value::Float(*f.value()),
        toml_edit::Value::Boolean(b) => Value::Bool(*b.value()),
        toml_edit::Value::Datetime(_) => Value::Other("a datetime"),
        toml_edit::Value::Array(array) => Value::Array(
            array
                .iter()
                .map(|item| {
                    let origin = Origin::Line(item.span().map_or(1, |span| line_of(text, span.start)));
                    Node { value: value_from_toml(text, item), origin }
                })
                .collect(),
        ),
        toml_edit::Value::InlineTable(table) => Value::Table(
            table
                .iter()
                .map(|(key, value)| {
                    let span = table.key(key).and_then(toml_edit::Key::span).or_else(|| value.span());
                    entry(text, key, span, value_from_toml(text, value))
                })
                .collect(),
        ),
    }
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// The prefix of environment variables that override keys: `MARTY__DEPENDENCIES__ORDERS_DB__TIMEOUT=2s`
/// sets `dependencies.orders_db.timeout`. Double underscores separate keys because keys contain single ones.
pub const ENV_PREFIX: &str = "MARTY__";

/// Applies `MARTY__...` overrides to the tree. A value is read as a TOML value when it is one (`20`,
/// `0.5`, `true`, `"quoted"`) and as a plain string otherwise (`10s`, `postgres://...`).
pub(crate) fn apply_env_overrides(root: &mut Node, vars: &[(String, String)], file: &str) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (var, raw) in vars {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            errors.push(ConfigError {
                file: file.to_owned(),
                origin: Origin::EnvVar(var.clone()),
                key: path.join("."),
                problem: "the variable name has an empty key segment".to_owned(),
                help: Some(
                    "separate keys with exactly two underscores, e.g. `MARTY__DEPENDENCIES__ORDERS_DB__TIMEOUT`"
                        .to_owned(),
                ),
            });
            continue;
        }
        let origin = Origin::EnvVar(var.clone());
        let value = match raw.parse::<toml_edit::Value>() {
            Ok(toml_edit::Value::InlineTable(_) | toml_edit::Value::Array(_)) | Err(_) => Value::String(raw.clone()),
            Ok(parsed) => value_from_toml(raw, &parsed),
        };
        if let Err(blocked_at) = set_path(root, &path, Node { value, origin: origin.clone() }) {
            errors.push(ConfigError {
                file: file.to_owned(),
                origin,
                key: path.join("."),
                problem: format!("`{}` is not a table, so it has no keys to override", path[..=blocked_at].join(".")),
                help: None,
            });
        }
    }
    errors
}

/// Sets `path` to `leaf`, creating tables on the way; `Err(i)` when `path[i]` exists and is not a table.
fn set_path(node: &mut Node, path: &[String], leaf: Node) -> Result<(), usize> {
    let Value::Table(entries) = &mut node.value else {
        return Err(0);
    };
    let (first, rest) = path.split_first().expect("override paths are never empty");
    let position = entries.iter().position(|(key, _)| key == first);
    if rest.is_empty() {
        match position {
            Some(i) => entries[i].1 = leaf,
            None => entries.push((first.clone(), leaf)),
        }
        return Ok(());
    }
    let index = match position {
        Some(i) => i,
        None => {
            entries.push((first.clone(), Node { value: Value::Table(Vec::new()), origin: leaf.origin.clone() }));
            entries.len() - 1
        }
    };
    set_path(&mut entries[index].1, rest, leaf).map_err(|depth| depth + 1)
}
