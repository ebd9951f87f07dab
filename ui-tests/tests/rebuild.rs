//! Cargo rebuilds a crate when its `marty.toml` changes, so the compile-time check cannot go stale:
//! a crate that builds, then a config edit that removes its dependency, then the build must fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cargo_build(dir: &Path, target: &Path) -> Output {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .env_remove("MARTY_CONFIG")
        .output()
        .expect("run cargo")
}

#[test]
fn editing_marty_toml_rebuilds_the_crate_and_rechecks_it() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned();
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace.join("target"), PathBuf::from);
    let dir = target.join("tests").join("rebuild-on-config-change");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"rebuild_check\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[dependencies]\nmarty = {{ path = {:?}, default-features = false }}\n\n[workspace]\n",
            workspace.join("runtime").display().to_string()
        ),
    )
    .unwrap();
    if let Ok(lock) = std::fs::read_to_string(workspace.join("Cargo.lock")) {
        std::fs::write(dir.join("Cargo.lock"), lock).unwrap();
    }
    std::fs::write(
        dir.join("src/lib.rs"),
        "#[derive(Debug)]\npub struct E(marty::Error);\nimpl From<marty::Error> for E { fn from(e: marty::Error) -> Self { E(e) } }\n\
         impl marty::Classify for E { fn classify(&self) -> marty::ErrorClass { self.0.classify() } }\n\
         #[marty::database_call(dependency = \"orders_db\")]\npub async fn load() -> Result<u32, E> { Ok(1) }\n",
    )
    .unwrap();
    // Its own target dir under ours: shared with nothing that runs at the same time.
    let build_dir = target.join("tests").join("rebuild-target");

    std::fs::write(dir.join("marty.toml"), "[dependencies.orders_db]\nkind = \"database\"\n").unwrap();
    let first = cargo_build(&dir, &build_dir);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));

    std::fs::write(dir.join("marty.toml"), "[dependencies.orders]\nkind = \"database\"\n").unwrap();
    let second = cargo_build(&dir, &build_dir);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the edit must trigger a rebuild that fails");
    assert!(stderr.contains("unknown dependency `orders_db`") && stderr.contains("did you mean `orders`?"), "{stderr}");

    std::fs::write(dir.join("marty.toml"), "[dependencies.orders_db]\nkind = \"database\"\n").unwrap();
    let third = cargo_build(&dir, &build_dir);
    assert!(third.status.success(), "{}", String::from_utf8_lossy(&third.stderr));
}
