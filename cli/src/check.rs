//! `cargo marty check`: each `marty.toml`, or each one a Kubernetes ConfigMap holds, read as the
//! service reads it at startup (`Config::parse_at_startup`: `MARTY__...` overrides and `${VAR}`
//! from the environment), every problem reported with file, line and key.

use std::path::{Path, PathBuf};

use clap::Args;
use marty_config::{Config, ConfigError, Environment, Origin};

use crate::{shown, Outcome};

#[derive(Args)]
pub(crate) struct CheckArgs {
    /// marty.toml files, or YAML files of ConfigMaps with `*.toml: |` entries (default: ./marty.toml).
    files: Vec<PathBuf>,
    /// KEY=VALUE lines (a `.env` file) added to the environment: the variables the deployment sets.
    #[arg(long, value_name = "FILE")]
    env_file: Vec<PathBuf>,
}

pub(crate) fn run(args: &CheckArgs) -> Result<Outcome, String> {
    let mut variables: Vec<(String, String)> = std::env::vars().collect();
    for file in &args.env_file {
        variables.extend(read_env_file(file)?);
    }
    let env = Environment::from_pairs(variables);
    let files = match args.files.is_empty() {
        true => vec![PathBuf::from(marty_config::DEFAULT_FILE)],
        false => args.files.clone(),
    };
    let mut valid = true;
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|error| format!("{}: {error}", shown(file)))?;
        let documents = match is_yaml(file) {
            true => config_map_entries(&text),
            false => vec![Embedded { key: None, first_line: 1, text }],
        };
        if documents.is_empty() {
            println!("{}: no `*.toml: |` entry in its ConfigMaps", shown(file));
            valid = false;
        }
        for document in documents {
            valid &= check(file, &document, &env);
        }
    }
    Ok(if valid { Outcome::Done } else { Outcome::Finding })
}

/// Prints what `document` of `file` is, or every problem in it; `true` when valid.
fn check(file: &Path, document: &Embedded, env: &Environment) -> bool {
    let name = match &document.key {
        Some(key) => format!("{} ({key} at line {})", shown(file), document.first_line - 1),
        None => shown(file),
    };
    match Config::parse_at_startup(&document.text, &shown(file), env) {
        Ok(config) => {
            let service = config.service.name.as_deref().map(|name| format!(": service `{name}`")).unwrap_or_default();
            println!("{name}: ok{service}");
            true
        }
        Err(errors) => {
            println!("{name}: invalid");
            for error in errors.iter() {
                // A ConfigMap's lines count from the file's top, as an editor shows them.
                let origin = match &error.origin {
                    Origin::Line(line) => Origin::Line(line + document.first_line - 1),
                    other => other.clone(),
                };
                println!("{}", ConfigError { origin, ..error.clone() });
            }
            false
        }
    }
}

fn is_yaml(file: &Path) -> bool {
    file.extension().is_some_and(|extension| extension == "yaml" || extension == "yml")
}

/// A configuration inside a file: its text, and the file's line where it begins.
struct Embedded {
    /// The ConfigMap entry's key (`marty.toml`), when it came from one.
    key: Option<String>,
    first_line: usize,
    text: String,
}

/// The `<name>.toml: |` block scalars of a YAML file's ConfigMaps (`data:` entries), unindented.
fn config_map_entries(yaml: &str) -> Vec<Embedded> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut entries = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let line = lines[index];
        index += 1;
        let trimmed = line.trim();
        let Some((key, style)) = trimmed.split_once(':') else { continue };
        let key = key.trim().trim_matches(['"', '\'']);
        if !key.ends_with(".toml") || !matches!(style.trim(), "|" | "|-" | "|+") {
            continue;
        }
        let key_indent = line.len() - line.trim_start().len();
        let first_line = index + 1;
        let mut block: Vec<&str> = Vec::new();
        while index < lines.len() {
            let next = lines[index];
            if !next.trim().is_empty() && next.len() - next.trim_start().len() <= key_indent {
                break;
            }
            block.push(next);
            index += 1;
        }
        let indent = block
            .iter()
            .filter(|line| !line.trim().is_empty())
            .map(|line| line.len() - line.trim_start().len())
            .min()
            .unwrap_or(0);
        let text: Vec<&str> = block.iter().map(|line| line.get(indent..).unwrap_or("")).collect();
        entries.push(Embedded { key: Some(key.to_owned()), first_line, text: text.join("\n") });
    }
    entries
}

/// `KEY=VALUE` lines; `#` comments, blank lines and a leading `export ` are ignored, and a value in
/// quotes loses them.
fn read_env_file(file: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(file).map_err(|error| format!("{}: {error}", shown(file)))?;
    let mut variables = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("{}:{}: expected KEY=VALUE", shown(file), number + 1));
        };
        let value = value.trim();
        let unquoted = ['"', '\''].iter().find_map(|quote| value.strip_prefix(*quote)?.strip_suffix(*quote));
        variables.push((key.trim().to_owned(), unquoted.unwrap_or(value).to_owned()));
    }
    Ok(variables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_map_entries_are_read_unindented_with_their_first_line() {
        let yaml = "apiVersion: v1\nkind: ConfigMap\ndata:\n  marty.toml: |\n    [service]\n    name = \"a\"\n\n    [http]\n  other: x\n---\ndata:\n  \"b.toml\": |-\n      [service]\n";
        let entries = config_map_entries(yaml);
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0].key.as_deref(), entries[0].first_line), (Some("marty.toml"), 5));
        assert_eq!(entries[0].text, "[service]\nname = \"a\"\n\n[http]");
        assert_eq!((entries[1].key.as_deref(), entries[1].first_line), (Some("b.toml"), 13));
        assert_eq!(entries[1].text, "[service]");
    }
}
