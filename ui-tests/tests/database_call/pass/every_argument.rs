#![deny(warnings)]
//! Every argument of the call attributes, on free fns and methods, compiled with warnings denied and run.

use marty::{Classify, ErrorClass};

#[derive(Debug)]
enum AppError {
    NotFound,
    Unavailable,
    Resilience(marty::Error),
}

impl From<marty::Error> for AppError {
    fn from(error: marty::Error) -> Self {
        AppError::Resilience(error)
    }
}

impl Classify for AppError {
    fn classify(&self) -> ErrorClass {
        match self {
            AppError::NotFound => ErrorClass::Expected,
            AppError::Unavailable => ErrorClass::Transient,
            AppError::Resilience(error) => error.classify(),
        }
    }
}

type AppResult<T> = Result<T, AppError>;

#[marty::database_call(dependency = "orders_db")]
async fn plain(id: u32) -> Result<u32, AppError> {
    if id == 0 {
        return Err(AppError::NotFound);
    }
    Ok(id * 2)
}

#[marty::database_call(dependency = "orders_db", operation = "load_order", timeout = "2s")]
async fn with_operation_and_timeout(id: &str) -> AppResult<String> {
    Ok(id.to_owned())
}

#[marty::api_call(dependency = "payments_api", retry(max_attempts = 5, backoff = "fixed", initial = "1ms", max = "5ms", jitter = false))]
async fn retried(attempts: &std::sync::atomic::AtomicU32) -> Result<u32, AppError> {
    let n = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if n < 2 {
        Err(AppError::Unavailable)
    } else {
        Ok(n)
    }
}

/// `retry = false` makes one attempt, so the body may consume its arguments.
#[marty::cache_call(dependency = "sessions", retry = false)]
async fn consumes(name: String) -> Result<String, AppError> {
    Ok(name)
}

fn never_retry(_: &AppError) -> ErrorClass {
    ErrorClass::Failure
}

#[marty::api_call(dependency = "payments_api", classify = never_retry)]
async fn classified(attempts: &std::sync::atomic::AtomicU32) -> Result<u32, AppError> {
    attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Err(AppError::Unavailable)
}

async fn default_order(_error: AppError) -> Result<u32, AppError> {
    Ok(42)
}

#[marty::database_call(dependency = "orders_db", fallback = default_order)]
async fn with_fallback() -> Result<u32, AppError> {
    Err(AppError::NotFound)
}

struct Repository {
    factor: u32,
}

impl Repository {
    #[marty::database_call(dependency = "orders_db", fallback = Self::cached, config = "../../../../ui-tests/marty.toml")]
    async fn load(&self, id: u32) -> Result<u32, AppError> {
        if id == 0 {
            return Err(AppError::NotFound);
        }
        Ok(id * self.factor)
    }

    async fn cached(&self, _error: AppError) -> Result<u32, AppError> {
        Ok(self.factor)
    }

    #[marty::cache_call(dependency = "sessions", operation = "generic")]
    async fn generic<T: std::fmt::Display + Sync>(&self, value: &T) -> Result<String, AppError> {
        Ok(format!("{value}{}", self.factor))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    assert_eq!(plain(21).await.unwrap(), 42);
    assert!(matches!(plain(0).await, Err(AppError::NotFound)));
    assert_eq!(with_operation_and_timeout("a").await.unwrap(), "a");
    let attempts = std::sync::atomic::AtomicU32::new(0);
    assert_eq!(retried(&attempts).await.unwrap(), 2, "two transient failures, then success");
    assert_eq!(consumes("x".to_owned()).await.unwrap(), "x");
    let attempts = std::sync::atomic::AtomicU32::new(0);
    assert!(classified(&attempts).await.is_err());
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 1, "the override says: not transient");
    assert_eq!(with_fallback().await.unwrap(), 42);
    let repository = Repository { factor: 3 };
    assert_eq!(repository.load(2).await.unwrap(), 6);
    assert_eq!(repository.load(0).await.unwrap(), 3, "the fallback answered");
    assert_eq!(repository.generic(&7).await.unwrap(), "73");
}
