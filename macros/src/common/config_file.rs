//! `marty.toml` at compile time: found relative to `CARGO_MANIFEST_DIR`, parsed by `marty-config` (the
//! same code the runtime uses at startup), cached per path for the rest of the compilation.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use darling::error::Accumulator;
use marty_config::{Config, ConfigErrors, DependencyKind, CONFIG_PATH_VAR, DEFAULT_FILE};
use proc_macro2::Span;

use super::args::StrArg;
use super::diagnostic::{did_you_mean, error};

/// The configuration one attribute checks against.
pub(crate) struct ConfigFile {
    /// Absolute path, for `include_str!` (so cargo rebuilds when the file changes) and the runtime.
    pub(crate) path: PathBuf,
    /// How messages name the file: relative to the crate when it is inside it.
    pub(crate) display: String,
    pub(crate) state: Rc<FileState>,
}

pub(crate) enum FileState {
    Missing,
    /// `reported`: a call site of this compilation has shown the errors already.
    Invalid {
        errors: ConfigErrors,
        reported: Cell<bool>,
    },
    Valid(Box<Config>),
}

thread_local! {
    /// Parsed files by path, with the text they were parsed from (a changed file is parsed again).
    static CACHE: RefCell<HashMap<PathBuf, (String, Rc<FileState>)>> = RefCell::new(HashMap::new());
}

thread_local! {
    /// Whether any file's errors were reported in this compilation: only then may an attribute
    /// return neither code nor errors (see `common::finish`).
    static REPORTED_ANY: Cell<bool> = const { Cell::new(false) };
}

/// Whether an earlier attribute of this compilation reported a configuration file's errors.
pub(crate) fn reported_earlier() -> bool {
    REPORTED_ANY.with(Cell::get)
}

/// Where the configuration is: `config = ".."` if given, relative to the crate's `Cargo.toml` (it is
/// written in the source, like `include_str!`); else `MARTY_CONFIG`, read as the runtime reads it:
/// relative to the working directory, which cargo sets to the workspace root (the package's root
/// outside a workspace), where `cargo run` starts too; else `marty.toml` beside `Cargo.toml`.
pub(crate) fn locate(explicit: Option<&str>) -> (PathBuf, PathBuf) {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| ".".into()));
    let path = match (explicit, std::env::var_os(CONFIG_PATH_VAR)) {
        (Some(explicit), _) => manifest_dir.join(explicit),
        (None, Some(from_env)) => absolute(Path::new(&from_env)),
        (None, None) => manifest_dir.join(DEFAULT_FILE),
    };
    (path, manifest_dir)
}

pub(crate) fn load(explicit: Option<&str>) -> ConfigFile {
    let (path, manifest_dir) = locate(explicit);
    let display = path.strip_prefix(&manifest_dir).unwrap_or(&path).display().to_string();
    let state = match std::fs::read_to_string(&path) {
        Err(_) => Rc::new(FileState::Missing),
        Ok(text) => CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if let Some((cached_text, state)) = cache.get(&path) {
                if *cached_text == text {
                    return state.clone();
                }
            }
            let state = Rc::new(match Config::parse(&text, &display) {
                Ok(config) => FileState::Valid(Box::new(config)),
                Err(errors) => FileState::Invalid { errors, reported: Cell::new(false) },
            });
            cache.insert(path.clone(), (text, state.clone()));
            state
        }),
    };
    ConfigFile { path: absolute(&path), display, state }
}

impl ConfigFile {
    /// For an attribute that cannot work without the file (`#[service]`, `#[saga]`): `true` when
    /// it is valid; otherwise the reason is reported at `span` and the caller skips what needs it.
    pub(crate) fn require(&self, span: Span, errors: &mut Accumulator) -> bool {
        match &*self.state {
            FileState::Valid(_) => true,
            FileState::Missing => {
                let help = format!("create `{}` beside Cargo.toml, e.g. `[service]` with `name = \"orders\"` and `[http]` with `addr = \"127.0.0.1:8080\"`", self.display);
                errors.push(error(span, format!("`{}` not found", self.display), help));
                false
            }
            FileState::Invalid { .. } => {
                self.report_invalid(span, errors);
                false
            }
        }
    }

    /// The file's errors, each with its line and key, at `span`: once per compilation. Every call
    /// site reads the same file, and the build fails on the first report, so the others stay quiet
    /// instead of repeating it (a changed file is parsed and reported again).
    pub(crate) fn report_invalid(&self, span: Span, errors: &mut Accumulator) {
        let FileState::Invalid { errors: config_errors, reported } = &*self.state else { return };
        if reported.replace(true) {
            return;
        }
        REPORTED_ANY.with(|any| any.set(true));
        for config_error in config_errors.iter() {
            let mut problem = config_error.clone();
            let help = problem.help.take().unwrap_or_else(|| {
                format!("fix `{}`; Marty checks it when compiling and again at startup", self.display)
            });
            errors.push(error(span, format!("invalid configuration: {problem}"), help));
        }
    }
}

/// What an attribute names a dependency for; it decides the kind required and the words used when
/// the name is not a dependency of that kind.
#[derive(Clone, Copy)]
pub(crate) enum DependencyUse<'a> {
    /// The dependency a call attribute of this kind wraps (`#[database_call]`, ...).
    Call(DependencyKind),
    /// A database holding `what` ("a saga's state", "the inbox").
    Holds(&'a str),
}

impl DependencyUse<'_> {
    fn kind(self) -> DependencyKind {
        match self {
            DependencyUse::Call(kind) => kind,
            DependencyUse::Holds(_) => DependencyKind::Database,
        }
    }
}

impl ConfigFile {
    /// The configuration, when the file exists and is valid.
    pub(crate) fn valid(&self) -> Option<&Config> {
        match &*self.state {
            FileState::Valid(config) => Some(config),
            _ => None,
        }
    }

    /// The names of the dependencies of `kind` the file declares (none when it is not valid).
    pub(crate) fn names_of_kind(&self, kind: DependencyKind) -> Vec<&str> {
        let dependencies = self.valid().into_iter().flat_map(|config| config.dependencies.values());
        dependencies.filter(|d| d.kind == kind).map(|d| d.name.as_str()).collect()
    }

    /// `name`, written at `span`, must be a dependency that this file declares with the kind `usage`
    /// needs. Every attribute that names a dependency checks it here, so the messages and suggestions
    /// are the same everywhere. `false` without a message when the file is not valid: its own errors
    /// are reported by the attribute (`require`, `report_invalid`).
    pub(crate) fn check_dependency(
        &self,
        name: &str,
        span: Span,
        usage: DependencyUse<'_>,
        errors: &mut Accumulator,
    ) -> bool {
        let Some(config) = self.valid() else { return false };
        let kind = usage.kind();
        let of_kind = self.names_of_kind(kind);
        let file = &self.display;
        let Some(declared) = config.dependency(name) else {
            let declare = format!("`[dependencies.{name}]` with `kind = \"{kind}\"`");
            let help = match (marty_config::suggest::nearest(name, of_kind.iter().copied()), of_kind.is_empty()) {
                (Some(_), _) => did_you_mean(name, &of_kind, &format!("`{file}` declares {kind} dependencies:")),
                (None, true) => format!("declare it in `{file}`: {declare}"),
                (None, false) => format!(
                    "declare it in `{file}`: {declare}; its {kind} dependencies are {}",
                    marty_config::suggest::list(of_kind.iter().copied())
                ),
            };
            errors.push(error(span, format!("unknown dependency `{name}`"), help));
            return false;
        };
        if declared.kind == kind {
            return true;
        }
        let (problem, help) = match usage {
            DependencyUse::Call(_) => (
                format!("`{name}` is {} dependency, not `{kind}`", with_article(declared.kind)),
                format!(
                    "call it with `#[{}(dependency = \"{name}\")]`, or set `kind = \"{kind}\"` under `[dependencies.{name}]`",
                    declared.kind.attribute()
                ),
            ),
            DependencyUse::Holds(what) => (
                format!("`{name}` is {} dependency, but {what} lives in a database", with_article(declared.kind)),
                match of_kind.is_empty() {
                    true => format!("declare one in `{file}`: `[dependencies.orders_db]` with `kind = \"database\"`"),
                    false => format!(
                        "name a database dependency of `{file}`: {}",
                        marty_config::suggest::list(of_kind.iter().copied())
                    ),
                },
            ),
        };
        errors.push(error(span, problem, help));
        false
    }

    /// The database that holds `what` for an attribute: `arg` if written, else `[outbox] store`
    /// (checked by `marty-config` already); `missing` is the error when there is neither. `None`
    /// without a message when the file is not valid, as for [`Self::check_dependency`].
    pub(crate) fn store(
        &self,
        arg: Option<&StrArg>,
        what: &str,
        missing: impl FnOnce() -> darling::Error,
        errors: &mut Accumulator,
    ) -> Option<String> {
        match (arg, &self.valid()?.outbox) {
            (Some(arg), _) => self
                .check_dependency(&arg.value, arg.span, DependencyUse::Holds(what), errors)
                .then(|| arg.value.clone()),
            (None, Some(outbox)) => Some(outbox.store.clone()),
            (None, None) => {
                errors.push(missing());
                None
            }
        }
    }
}

/// "an `api`", "a `database`".
fn with_article(kind: DependencyKind) -> String {
    let name = kind.to_string();
    let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} `{name}`")
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// The file's text as it compiled, for the runtime to fall back to. `include_str!` makes cargo
/// rebuild the crate when the file changes, and `option_env!` when `MARTY_CONFIG` does (a proc
/// macro cannot declare what it read, but the code it writes can).
pub(crate) fn embedded_text(core: &proc_macro2::TokenStream, path: &str) -> proc_macro2::TokenStream {
    quote::quote!({
        let _ = #core::option_env!("MARTY_CONFIG");
        #core::include_str!(#path)
    })
}
