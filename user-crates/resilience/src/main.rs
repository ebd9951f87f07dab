//! Retries a call that fails twice with a transient error, then times out one that hangs: the
//! policies from marty.toml, with no HTTP stack compiled.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use marty::{CallError, Classify, ErrorClass};

static ATTEMPTS: AtomicU32 = AtomicU32::new(0);

#[marty::api_call(dependency = "inventory_api")]
async fn reserve(item: &str) -> Result<u32, CallError<std::io::Error>> {
    if ATTEMPTS.fetch_add(1, Ordering::SeqCst) < 2 {
        return Err(CallError::Inner(std::io::ErrorKind::ConnectionReset.into()));
    }
    Ok(item.len() as u32)
}

#[marty::api_call(dependency = "inventory_api", retry = false)]
async fn hang() -> Result<(), CallError<std::io::Error>> {
    tokio::time::sleep(Duration::from_secs(10)).await;
    Ok(())
}

#[tokio::main]
async fn main() {
    assert_eq!(reserve("book").await.unwrap(), 4);
    assert_eq!(ATTEMPTS.load(Ordering::SeqCst), 3, "two transient failures retried");
    let timed_out = hang().await.unwrap_err();
    assert!(matches!(timed_out, CallError::Resilience(marty::Error::Timeout { .. })), "{timed_out:?}");
    assert_eq!(timed_out.classify(), ErrorClass::Transient);
    println!("resilience: ok");
}
