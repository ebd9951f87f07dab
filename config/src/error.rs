//! Configuration errors: every one names the file, the line (or the environment variable) and the key.

use std::fmt;

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of the configuration file (1-based).
    Line(usize),
    /// A `MARTY__...` environment variable that overrode the file.
    EnvVar(String),
    /// The key is absent; the error is about the table that should hold it.
    Missing,
}

/// One problem in a configuration, with the edit that fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as the user knows it (`marty.toml`, or the path it was loaded from).
    pub file: String,
    /// The line or environment variable the offending value came from.
    pub origin: Origin,
    /// The dotted key, e.g. `dependencies.orders_db.timeout`; empty for a file-level problem.
    pub key: String,
    /// What is wrong: lowercase, no trailing period.
    pub problem: String,
    /// The concrete edit that fixes it, when there is one.
    pub help: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::Line(line) => write!(f, "{}:{line}: ", self.file)?,
            Origin::EnvVar(var) => write!(f, "environment variable `{var}` (overriding {}): ", self.file)?,
            Origin::Missing => write!(f, "{}: ", self.file)?,
        }
        if !self.key.is_empty() {
            write!(f, "key `{}`: ", self.key)?;
        }
        f.write_str(&self.problem)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found in one configuration: validation does not stop at the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// `Ok` when no check found anything, else the errors found, for checks that collect them all
    /// before answering.
    pub fn from_found(errors: Vec<ConfigError>) -> Result<(), ConfigErrors> {
        match errors.is_empty() {
            true => Ok(()),
            false => Err(ConfigErrors(errors)),
        }
    }

    /// The individual errors, in the order they were found.
    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
