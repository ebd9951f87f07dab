//! Every attribute's misuse and its exact error text, and pass cases covering every argument.
//! `.stderr` files are generated with the machine's toolchain (`TRYBUILD=overwrite`), then read as a user would.

#[test]
fn ui() {
    // The macros find `marty.toml` beside Cargo.toml; trybuild compiles each case in a generated crate
    // elsewhere, so point the macros (and, for pass cases, the runtime) at this crate's file.
    std::env::set_var("MARTY_CONFIG", concat!(env!("CARGO_MANIFEST_DIR"), "/marty.toml"));
    let cases = trybuild::TestCases::new();
    cases.pass("tests/database_call/pass/*.rs");
    cases.compile_fail("tests/database_call/fail/*.rs");
    cases.pass("tests/service/pass/*.rs");
    cases.compile_fail("tests/service/fail/*.rs");
    cases.pass("tests/event/pass/*.rs");
    cases.compile_fail("tests/event/fail/*.rs");
    cases.pass("tests/event_handler/pass/*.rs");
    cases.compile_fail("tests/event_handler/fail/*.rs");
    cases.pass("tests/saga/pass/*.rs");
    cases.compile_fail("tests/saga/fail/*.rs");
}
