//! The README's demo does what it says: the breaker opens when the service stops, short-circuits,
//! and closes once the service is back.

use std::process::Command;

#[test]
fn the_demo_shows_the_breaker_open_reject_and_recover() {
    let output = Command::new(env!("CARGO_BIN_EXE_circuit_breaker")).output().expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let transitions: Vec<&str> = stdout.lines().filter_map(|line| line.split("** circuit breaker ").nth(1)).collect();
    assert_eq!(transitions.first().map(|t| t.split(" (").next().unwrap()), Some("closed -> open"), "{stdout}");
    assert!(transitions.last().unwrap().starts_with("half_open -> closed"), "{stdout}");
    assert!(stdout.contains("short-circuited: the circuit breaker is open"), "{stdout}");
    let last_call = stdout.lines().rfind(|line| line.contains("call took")).unwrap();
    assert!(last_call.contains("[   closed]") && last_call.ends_with("ok: 42 in stock"), "{last_call}");
    assert!(stdout.contains(
        r#"marty_calls_total{dependency="inventory_api",operation="stock_level",outcome="short_circuited"}"#
    ));
}
