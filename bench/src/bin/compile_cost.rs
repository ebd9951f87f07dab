//! What `#[database_call]` costs the compiler: a generated crate of 200 wrapped fns against the same
//! 200 fns under `#[tracing::instrument(err)]`, each rebuilt (dependencies warm) in interleaved
//! rounds; medians. Last stdout line: one JSON object.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use marty_bench::{json, median, Value};

const FNS: usize = 200;
const ROUNDS: usize = 3;

fn main() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench/ is inside the workspace").to_owned();
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace.join("target"), PathBuf::from);
    let root = target.join("compile-cost");
    write_workspace(&root, &workspace);

    // Dependencies once, so the rounds time only the generated crates.
    cargo_build(&root, None);
    let (mut marty_s, mut instrument_s) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        for (name, samples) in [("marty_200", &mut marty_s), ("instrument_200", &mut instrument_s)] {
            touch(&root.join(name).join("src/lib.rs"), round);
            let start = Instant::now();
            cargo_build(&root, Some(name));
            samples.push(start.elapsed().as_secs_f64());
        }
    }
    let (marty, instrument) = (median(&mut marty_s), median(&mut instrument_s));
    println!("{FNS} fns, {ROUNDS} interleaved rebuilds each (dev profile, dependencies warm); medians in seconds");
    println!(
        "{}",
        json(&[
            ("bench", Value::Text("compile_cost".into())),
            ("fns", Value::Number(FNS as f64)),
            ("marty_build_s", Value::Number(marty)),
            ("instrument_build_s", Value::Number(instrument)),
            ("ratio", Value::Number(marty / instrument)),
        ])
    );
}

fn write_workspace(root: &Path, workspace: &Path) {
    let runtime = workspace.join("runtime");
    write(&root.join("Cargo.toml"), "[workspace]\nresolver = \"2\"\nmembers = [\"marty_200\", \"instrument_200\"]\n");
    // The workspace's lock file, so both crates build against the versions the project tests.
    if let Ok(lock) = std::fs::read_to_string(workspace.join("Cargo.lock")) {
        if !root.join("Cargo.lock").exists() {
            write(&root.join("Cargo.lock"), &lock);
        }
    }
    write(
        &root.join("marty_200/Cargo.toml"),
        &format!("[package]\nname = \"marty_200\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[dependencies]\nmarty = {{ path = {:?} }}\n", runtime.display().to_string()),
    );
    write(&root.join("marty_200/marty.toml"), "[dependencies.db]\nkind = \"database\"\n");
    let mut marty_lib = String::from(
        "#[derive(Debug)]\npub struct E(marty::Error);\n\nimpl From<marty::Error> for E {\n    fn from(error: marty::Error) -> Self {\n        E(error)\n    }\n}\n\nimpl marty::Classify for E {\n    fn classify(&self) -> marty::ErrorClass {\n        self.0.classify()\n    }\n}\n",
    );
    for i in 0..FNS {
        write!(marty_lib, "\n#[marty::database_call(dependency = \"db\")]\npub async fn f{i}(x: u64) -> Result<u64, E> {{\n    Ok(x + {i})\n}}\n").unwrap();
    }
    marty_lib.push_str(&call_all());
    write(&root.join("marty_200/src/lib.rs"), &marty_lib);

    write(
        &root.join("instrument_200/Cargo.toml"),
        "[package]\nname = \"instrument_200\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[dependencies]\ntracing = { version = \"0.1\", features = [\"attributes\"] }\n",
    );
    let mut instrument_lib = String::from("#[derive(Debug)]\npub struct E;\n\nimpl std::fmt::Display for E {\n    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {\n        f.write_str(\"e\")\n    }\n}\n");
    for i in 0..FNS {
        write!(
            instrument_lib,
            "\n#[tracing::instrument(err)]\npub async fn f{i}(x: u64) -> Result<u64, E> {{\n    Ok(x + {i})\n}}\n"
        )
        .unwrap();
    }
    instrument_lib.push_str(&call_all());
    write(&root.join("instrument_200/src/lib.rs"), &instrument_lib);
}

/// A fn that awaits every generated fn, so their futures are compiled to machine code in this crate
/// rather than left for a caller to instantiate.
fn call_all() -> String {
    let mut text = String::from("\npub async fn call_all(x: u64) -> Result<u64, E> {\n    let mut sum = 0;\n");
    for i in 0..FNS {
        writeln!(text, "    sum += f{i}(x).await?;").unwrap();
    }
    text.push_str("    Ok(sum)\n}\n");
    text
}

/// Changes the file so cargo rebuilds the crate.
fn touch(path: &Path, round: usize) {
    let text = std::fs::read_to_string(path).unwrap();
    let body = text.split_once("// round ").map_or(text.as_str(), |(body, _)| body).to_owned();
    write(path, &format!("{body}// round {round}\n"));
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn cargo_build(root: &Path, package: Option<&str>) {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.arg("build").arg("--quiet").current_dir(root).env_remove("CARGO_TARGET_DIR").env_remove("MARTY_CONFIG");
    if let Some(package) = package {
        command.args(["-p", package]);
    }
    let status = command.status().expect("run cargo");
    assert!(status.success(), "cargo build failed in {}", root.display());
}
