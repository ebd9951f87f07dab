//! `crate = ".."` for a crate that depends on Marty under another name: no `::marty` path may be
//! emitted. A local `marty` module stands where a careless expansion would look.
#![deny(warnings)]

#[allow(dead_code)]
mod marty {}

#[derive(Debug)]
struct AppError(renamed_marty::Error);

impl From<renamed_marty::Error> for AppError {
    fn from(error: renamed_marty::Error) -> Self {
        AppError(error)
    }
}

impl renamed_marty::Classify for AppError {
    fn classify(&self) -> renamed_marty::ErrorClass {
        self.0.classify()
    }
}

#[allow(dead_code)]
#[renamed_marty::database_call(dependency = "orders_db", crate = "renamed_marty")]
async fn load(id: u32) -> Result<u32, AppError> {
    Ok(id)
}

#[allow(dead_code)]
#[renamed_marty::cache_call(dependency = "sessions", crate = renamed_marty)]
async fn session() -> Result<u32, AppError> {
    Ok(1)
}

#[cfg(test)]
#[tokio::test]
async fn calls_expand_against_the_renamed_crate() {
    assert_eq!(load(3).await.unwrap(), 3);
    assert_eq!(session().await.unwrap(), 1);
}
