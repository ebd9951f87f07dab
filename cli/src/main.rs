//! `cargo marty`: the developer's and the operator's tool for Marty services.
//!
//! Exit codes, for CI and scripts: 0 done; 1 a finding (an invalid configuration, a row or saga
//! that is not there to replay or resume); 2 the command could not run (bad arguments, a file or
//! database that cannot be read).

mod check;
mod new;
mod openapi;
mod operator;
mod output;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo-marty", bin_name = "cargo marty", version)]
#[command(about = "Marty's tool: new services, configuration checks, Marty's tables, the outbox and sagas")]
#[command(after_help = "Exit codes: 0 done, 1 a finding (invalid configuration, nothing to replay or resume), \
                        2 the command could not run.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A new service crate that builds, passes its tests and serves /healthz on first run.
    New(new::NewArgs),
    /// Validates marty.toml files, and Kubernetes ConfigMaps holding them, as the service would at
    /// startup (the same code), with the environment's and --env-file's variables.
    Check(check::CheckArgs),
    /// Prints the DDL of Marty's tables (outbox, inbox, sagas), for teams that run their own
    /// migrations (`[storage] migrate = false`).
    Schema(SchemaArgs),
    /// The transactional outbox: rows waiting to be published, rows the relay gave up on, replay.
    Outbox {
        #[command(subcommand)]
        command: operator::OutboxCommand,
        #[command(flatten)]
        database: operator::DatabaseArgs,
    },
    /// Sagas: list them, show one with its history, list the parked ones, resume one.
    Saga {
        #[command(subcommand)]
        command: operator::SagaCommand,
        #[command(flatten)]
        database: operator::DatabaseArgs,
    },
    /// Writes a service's OpenAPI description to a file, for client generators: runs the service
    /// binary, which writes it once its configuration is loaded (set or default its `${VAR}`s) and
    /// exits before `server_with` builds its state (no database needed there).
    Openapi(openapi::OpenapiArgs),
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct SchemaArgs {
    /// PostgreSQL's DDL.
    #[arg(long)]
    postgres: bool,
    /// SQLite's DDL.
    #[arg(long)]
    sqlite: bool,
}

/// How a command ended.
pub(crate) enum Outcome {
    Done,
    /// A finding: what was looked for is wrong or not there.
    Finding,
}

fn main() -> ExitCode {
    // `cargo marty ..` runs `cargo-marty marty ..`; `cargo-marty ..` works too.
    let mut args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|arg| arg == "marty") {
        args.remove(1);
    }
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::New(args) => new::run(&args),
        Command::Check(args) => check::run(&args),
        Command::Schema(args) => {
            let database = if args.sqlite {
                marty::store::schema::Database::Sqlite
            } else {
                marty::store::schema::Database::Postgres
            };
            print!("{}", marty::store::schema::ddl(database));
            Ok(Outcome::Done)
        }
        Command::Outbox { command, database } => operator::outbox(&database, command),
        Command::Saga { command, database } => operator::saga(&database, command),
        Command::Openapi(args) => openapi::run(&args),
    };
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Finding) => ExitCode::from(1),
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

/// Where a path is, for messages: as given.
pub(crate) fn shown(path: &std::path::Path) -> String {
    path.display().to_string()
}

/// The current directory joined with `path` (a child process may run elsewhere).
pub(crate) fn absolute(path: PathBuf) -> Result<PathBuf, String> {
    std::path::absolute(&path).map_err(|error| format!("{}: {error}", shown(&path)))
}
