//! `cargo marty openapi`: the service binary, run with `MARTY_OPENAPI_OUT`, writes its description
//! once its configuration is loaded and exits, before it connects to anything.

use std::path::PathBuf;
use std::process::Command;

use clap::Args;

use crate::{absolute, shown, Outcome};

#[derive(Args)]
pub(crate) struct OpenapiArgs {
    /// The package of the service (`cargo run -p`), when the workspace has several.
    #[arg(long, short)]
    package: Option<String>,
    /// The service's binary (`cargo run --bin`), when the package has several.
    #[arg(long)]
    bin: Option<String>,
    /// Where to write the description.
    #[arg(long, short, default_value = "openapi.json")]
    output: PathBuf,
    /// Build in release mode (as your CI's other steps do, to share their build).
    #[arg(long)]
    release: bool,
}

pub(crate) fn run(args: &OpenapiArgs) -> Result<Outcome, String> {
    let output = absolute(args.output.clone())?;
    let _ = std::fs::remove_file(&output);
    // Under `cargo marty`, cargo says where it is.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["run", "--quiet"]);
    if let Some(package) = &args.package {
        command.args(["--package", package]);
    }
    if let Some(bin) = &args.bin {
        command.args(["--bin", bin]);
    }
    if args.release {
        command.arg("--release");
    }
    command.env(marty::openapi::OUT_VARIABLE, &output);
    let status = command.status().map_err(|error| format!("cannot run cargo: {error}"))?;
    if !status.success() {
        return Err(format!("the service did not write its description ({status})"));
    }
    if !output.is_file() {
        let help = "does its main start with `marty::service::server(..)` or `server_with(..)`, and does its marty.toml have `[openapi]`?";
        return Err(format!("the service ended without writing {}: {help}", shown(&output)));
    }
    println!("{}", shown(&args.output));
    Ok(Outcome::Done)
}
