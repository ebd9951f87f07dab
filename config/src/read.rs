//! A schema-directed reader over the value tree: typed getters that record every error (with its
//! origin and a fix) instead of stopping at the first, and an unknown-key check with suggestions.

use std::time::Duration;

use crate::duration::{parse_duration, DURATION_HELP};
use crate::error::{ConfigError, Origin};
use crate::suggest;
use crate::tree::{Node, Value};

/// Looks up environment variables for `${VAR}` expansion; `None` at compile time, when strings stay as written.
pub(crate) type Expand<'a> = Option<&'a dyn Fn(&str) -> Option<String>>;

pub(crate) struct Reader<'a> {
    file: &'a str,
    expand: Expand<'a>,
    pub(crate) errors: Vec<ConfigError>,
}

/// A table being read: its dotted path, its entries, and where it came from.
#[derive(Clone)]
pub(crate) struct Table<'n> {
    pub(crate) path: String,
    entries: &'n [(String, Node)],
    pub(crate) origin: &'n Origin,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(file: &'a str, expand: Expand<'a>) -> Self {
        Reader { file, expand, errors: Vec::new() }
    }

    pub(crate) fn root<'n>(&mut self, node: &'n Node) -> Table<'n> {
        match &node.value {
            Value::Table(entries) => Table { path: String::new(), entries, origin: &node.origin },
            _ => unreachable!("a TOML document is always a table"),
        }
    }

    pub(crate) fn error(&mut self, origin: &Origin, key: &str, problem: impl Into<String>, help: Option<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            origin: origin.clone(),
            key: key.to_owned(),
            problem: problem.into(),
            help,
        });
    }

    /// Reports every key of `table` that is not in `allowed`, suggesting the nearest valid one.
    pub(crate) fn deny_unknown_keys(&mut self, table: &Table<'_>, allowed: &[&str]) {
        for (key, node) in table.entries {
            if allowed.contains(&key.as_str()) {
                continue;
            }
            let help = match suggest::nearest(key, allowed.iter().copied()) {
                Some(near) => {
                    format!("did you mean `{near}`? valid keys here: {}", suggest::list(allowed.iter().copied()))
                }
                None => format!("valid keys here: {}", suggest::list(allowed.iter().copied())),
            };
            self.error(&node.origin, &join(&table.path, key), "unknown key", Some(help));
        }
    }

    /// A policy written as a table or switched by a boolean (`retry = false`, `circuit_breaker =
    /// false`, as on the attributes): `Ok(table)`, `Err(enabled)`, or `None` when absent or not
    /// one of the two (an error).
    pub(crate) fn table_or_switch<'n>(&mut self, table: &Table<'n>, key: &str) -> Option<Result<Table<'n>, bool>> {
        let node = find(table, key)?;
        match &node.value {
            Value::Bool(enabled) => Some(Err(*enabled)),
            Value::Table(_) => self.table(table, key).map(Ok),
            other => {
                let full_path = join(&table.path, key);
                let problem = format!("expected a table or a boolean, found {}", other.type_name());
                let help = Some(format!("`{key} = false` turns it off; `{key} = {{ ... }}` configures it"));
                self.error(&node.origin, &full_path, problem, help);
                None
            }
        }
    }

    /// The sub-table `key`, if present; a value of another type is an error.
    pub(crate) fn table<'n>(&mut self, table: &Table<'n>, key: &str) -> Option<Table<'n>> {
        let node = find(table, key)?;
        let full_path = join(&table.path, key);
        match &node.value {
            Value::Table(entries) => Some(Table { path: full_path, entries, origin: &node.origin }),
            other => {
                let problem = format!("expected a table, found {}", other.type_name());
                let help =
                    Some(format!("write it as a `[{full_path}]` section or an inline table `{key} = {{ ... }}`"));
                self.error(&node.origin, &full_path, problem, help);
                None
            }
        }
    }

    /// The free-form table `key` (for `[app]`), its strings expanded at startup; only its being a
    /// table is checked here.
    pub(crate) fn free_form(&mut self, table: &Table<'_>, key: &str) -> Option<Node> {
        self.table(table, key)?;
        let mut node = find(table, key)?.clone();
        if let Some(lookup) = self.expand {
            self.expand_strings(&mut node, &join(&table.path, key), lookup);
        }
        Some(node)
    }

    fn expand_strings(&mut self, node: &mut Node, path: &str, lookup: &dyn Fn(&str) -> Option<String>) {
        match &mut node.value {
            Value::String(text) => match expand_env(text, lookup) {
                Ok(expanded) => *text = expanded,
                Err(problem) => {
                    let help = "set the variable in the service's environment, or give it a default: `${VAR:-value}`";
                    self.error(&node.origin, path, problem, Some(help.to_owned()));
                }
            },
            Value::Table(entries) => {
                for (key, child) in entries {
                    self.expand_strings(child, &join(path, key), lookup);
                }
            }
            Value::Array(items) => {
                for (index, child) in items.iter_mut().enumerate() {
                    self.expand_strings(child, &join(path, &index.to_string()), lookup);
                }
            }
            _ => {}
        }
    }

    /// The entries of a table whose keys are names the user chose (e.g. `[dependencies.*]`).
    pub(crate) fn named_entries<'n>(&self, table: &Table<'n>) -> &'n [(String, Node)] {
        table.entries
    }

    pub(crate) fn as_table<'n>(&mut self, node: &'n Node, path: String) -> Option<Table<'n>> {
        match &node.value {
            Value::Table(entries) => Some(Table { path, entries, origin: &node.origin }),
            other => {
                let problem = format!("expected a table, found {}", other.type_name());
                self.error(&node.origin, &path, problem, None);
                None
            }
        }
    }

    /// A string as the file writes it, before `${VAR}` expansion (`None` for other types).
    pub(crate) fn raw_string<'n>(&self, table: &Table<'n>, key: &str) -> Option<&'n str> {
        match &find(table, key)?.value {
            Value::String(text) => Some(text),
            _ => None,
        }
    }

    pub(crate) fn string(&mut self, table: &Table<'_>, key: &str) -> Option<String> {
        let node = find(table, key)?;
        let Value::String(text) = &node.value else {
            self.type_error(table, key, node, "a string", "\"...\"");
            return None;
        };
        match self.expand {
            Some(lookup) => self.expanded(table, key, node, text, lookup),
            None => Some(text.clone()),
        }
    }

    /// `text` with `${VAR}`s expanded, or `None` after reporting an unset variable.
    fn expanded(
        &mut self,
        table: &Table<'_>,
        key: &str,
        node: &Node,
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Option<String> {
        match expand_env(text, lookup) {
            Ok(expanded) => Some(expanded),
            Err(problem) => {
                let help = Some(
                    "set the variable in the service's environment, or give it a default: `${VAR:-value}`".to_owned(),
                );
                self.error(&node.origin, &join(&table.path, key), problem, help);
                None
            }
        }
    }

    /// A string that must be one of `choices`.
    pub(crate) fn choice(&mut self, table: &Table<'_>, key: &str, choices: &[&str]) -> Option<String> {
        let node = find(table, key)?;
        let value = self.string(table, key)?;
        if choices.contains(&value.as_str()) {
            return Some(value);
        }
        let help = match suggest::nearest(&value, choices.iter().copied()) {
            Some(near) => format!("did you mean `{near}`? valid values: {}", suggest::list(choices.iter().copied())),
            None => format!("valid values: {}", suggest::list(choices.iter().copied())),
        };
        self.error(&node.origin, &join(&table.path, key), format!("unknown value `{value}`"), Some(help));
        None
    }

    pub(crate) fn duration(&mut self, table: &Table<'_>, key: &str) -> Option<Duration> {
        let node = find(table, key)?;
        let Value::String(text) = &node.value else {
            self.type_error(table, key, node, "a duration string", "\"10s\"");
            return None;
        };
        // `${VAR}` works in durations too; when compiling, such a value is only known at startup.
        let text = match self.expand {
            Some(lookup) => self.expanded(table, key, node, text, lookup)?,
            // When compiling, a value made only of variables with defaults is checked with them.
            None if text.contains("${") => expand_env(text, &|_| None).ok()?,
            None => text.clone(),
        };
        match parse_duration(&text) {
            Ok(duration) => Some(duration),
            Err(error) => {
                self.error(&node.origin, &join(&table.path, key), error.problem, Some(DURATION_HELP.to_owned()));
                None
            }
        }
    }

    /// A whole number in `min..=max`.
    pub(crate) fn integer(&mut self, table: &Table<'_>, key: &str, min: i64, max: i64) -> Option<i64> {
        let node = find(table, key)?;
        let Value::Integer(value) = node.value else {
            self.type_error(table, key, node, "a whole number", &min.max(1).to_string());
            return None;
        };
        if !(min..=max).contains(&value) {
            let problem = format!("{value} is out of range: it must be between {min} and {max}");
            self.error(&node.origin, &join(&table.path, key), problem, None);
            return None;
        }
        Some(value)
    }

    /// A share between 0 and 1; `allow_zero` says whether 0 itself makes sense.
    pub(crate) fn rate(&mut self, table: &Table<'_>, key: &str, allow_zero: bool) -> Option<f64> {
        let node = find(table, key)?;
        let value = match node.value {
            Value::Float(value) => value,
            Value::Integer(value @ (0 | 1)) => value as f64,
            _ => {
                self.type_error(table, key, node, "a number between 0 and 1", "0.5");
                return None;
            }
        };
        let in_range = if allow_zero { (0.0..=1.0).contains(&value) } else { value > 0.0 && value <= 1.0 };
        if !in_range {
            let lower = if allow_zero { "0" } else { "above 0" };
            let problem =
                format!("{value} is out of range: it must be {lower} and at most 1 (a share, e.g. 0.5 for 50%)");
            self.error(&node.origin, &join(&table.path, key), problem, None);
            return None;
        }
        Some(value)
    }

    pub(crate) fn boolean(&mut self, table: &Table<'_>, key: &str) -> Option<bool> {
        let node = find(table, key)?;
        match node.value {
            Value::Bool(value) => Some(value),
            _ => {
                self.type_error(table, key, node, "`true` or `false`", "true");
                None
            }
        }
    }

    /// A string, number or boolean as text (librdkafka's properties are all text); strings expand
    /// `${VAR}` at startup.
    pub(crate) fn scalar_text(&mut self, table: &Table<'_>, key: &str) -> Option<String> {
        let node = find(table, key)?;
        match &node.value {
            Value::String(_) => self.string(table, key),
            Value::Integer(number) => Some(number.to_string()),
            Value::Float(number) => Some(number.to_string()),
            Value::Bool(flag) => Some(flag.to_string()),
            _ => {
                self.type_error(table, key, node, "a string, number or boolean", "\"value\"");
                None
            }
        }
    }

    /// An array of 1 to `max` positive numbers, each larger than the one before (histogram bounds).
    pub(crate) fn increasing_numbers(&mut self, table: &Table<'_>, key: &str, max: usize) -> Option<Vec<f64>> {
        let node = find(table, key)?;
        let example = "[0.005, 0.05, 0.5, 5.0]";
        let Value::Array(items) = &node.value else {
            self.type_error(table, key, node, "an array of numbers", example);
            return None;
        };
        let numbers: Option<Vec<f64>> = items
            .iter()
            .map(|item| match item.value {
                Value::Float(number) => Some(number),
                Value::Integer(number) => Some(number as f64),
                _ => None,
            })
            .collect();
        let problem = match &numbers {
            None => Some("every bound must be a number of seconds".to_owned()),
            Some(numbers) if numbers.is_empty() || numbers.len() > max => {
                Some(format!("give 1 to {max} bounds, not {}", numbers.len()))
            }
            Some(numbers) if numbers[0] <= 0.0 => Some("bounds must be above zero".to_owned()),
            Some(numbers) => numbers
                .windows(2)
                .find(|pair| pair[1] <= pair[0])
                .map(|pair| format!("bounds must increase: {} comes after {}", pair[1], pair[0])),
        };
        match problem {
            None => numbers,
            Some(problem) => {
                let help = Some(format!("write increasing seconds, e.g. `{key} = {example}`"));
                self.error(&node.origin, &join(&table.path, key), problem, help);
                None
            }
        }
    }

    /// An array of distinct, non-empty strings (each with `${VAR}`s expanded at startup).
    pub(crate) fn strings(&mut self, table: &Table<'_>, key: &str, example: &str) -> Option<Vec<String>> {
        let node = find(table, key)?;
        let Value::Array(items) = &node.value else {
            self.type_error(table, key, node, "an array of strings", example);
            return None;
        };
        let mut strings: Vec<String> = Vec::with_capacity(items.len());
        for item in items {
            let text = match &item.value {
                Value::String(text) => text,
                other => {
                    let problem = format!("expected strings, found {}", other.type_name());
                    let help = Some(format!("write it as `{key} = {example}`"));
                    self.error(&item.origin, &join(&table.path, key), problem, help);
                    return None;
                }
            };
            let text = match self.expand {
                Some(lookup) => self.expanded(table, key, item, text, lookup)?,
                None => text.clone(),
            };
            let problem = if text.trim().is_empty() {
                Some("an empty name".to_owned())
            } else if strings.contains(&text) {
                Some(format!("`{text}` is listed twice"))
            } else {
                None
            };
            if let Some(problem) = problem {
                let help = Some(format!("list each once, e.g. `{key} = {example}`"));
                self.error(&item.origin, &join(&table.path, key), problem, help);
                return None;
            }
            strings.push(text);
        }
        Some(strings)
    }

    pub(crate) fn has(&self, table: &Table<'_>, key: &str) -> bool {
        find(table, key).is_some()
    }

    /// The origin of `key` in `table`, or of the table itself when the key is absent.
    pub(crate) fn origin_of<'n>(&self, table: &Table<'n>, key: &str) -> &'n Origin {
        find(table, key).map_or(table.origin, |node| &node.origin)
    }

    fn type_error(&mut self, table: &Table<'_>, key: &str, node: &Node, expected: &str, example: &str) {
        let problem = format!("expected {expected}, found {}", node.value.type_name());
        let help = Some(format!("write it as `{key} = {example}`"));
        self.error(&node.origin, &join(&table.path, key), problem, help);
    }
}

fn find<'n>(table: &Table<'n>, key: &str) -> Option<&'n Node> {
    table.entries.iter().find(|(k, _)| k == key).map(|(_, node)| node)
}

/// `parent.key`, or `key` at the root.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// Replaces each `${NAME}` with the variable's value, and `${NAME:-default}` with it or, when it is
/// unset or empty, with `default` (as a shell does); `$$` writes a literal `$`.
pub(crate) fn expand_env(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after.find('}').ok_or_else(|| format!("unterminated `${{` in `{text}`"))?;
            let (name, default) = match after[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&after[..end], None),
            };
            let value = match (lookup(name).filter(|value| !value.is_empty() || default.is_none()), default) {
                (Some(value), _) => value,
                (None, Some(default)) => default.to_owned(),
                (None, None) => return Err(format!("environment variable `{name}` is not set")),
            };
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::expand_env;

    #[test]
    fn expands_variables_and_escapes() {
        let lookup = |name: &str| (name == "PASSWORD").then(|| "s3cret".to_owned());
        assert_eq!(
            expand_env("postgres://app:${PASSWORD}@db/orders", &lookup).unwrap(),
            "postgres://app:s3cret@db/orders"
        );
        assert_eq!(expand_env("cost: $$5", &lookup).unwrap(), "cost: $5");
        assert_eq!(expand_env("${MISSING}", &lookup).unwrap_err(), "environment variable `MISSING` is not set");
        assert!(expand_env("${OPEN", &lookup).is_err());
    }

    #[test]
    fn a_default_stands_in_for_an_unset_or_empty_variable() {
        let lookup = |name: &str| match name {
            "PORT" => Some("9000".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(expand_env("0.0.0.0:${PORT:-8080}", &lookup).unwrap(), "0.0.0.0:9000");
        assert_eq!(expand_env("0.0.0.0:${MISSING:-8080}", &lookup).unwrap(), "0.0.0.0:8080");
        assert_eq!(expand_env("${EMPTY:-fallback}", &lookup).unwrap(), "fallback");
        assert_eq!(expand_env("[${EMPTY}]", &lookup).unwrap(), "[]");
        assert_eq!(expand_env("${MISSING:-}", &lookup).unwrap(), "");
    }
}
