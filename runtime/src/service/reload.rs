//! Configuration reloads while serving: on SIGHUP, or when the file changes (polled), the
//! configuration is re-read and applied to the running dependencies (see
//! [`DependencyRegistry::reload`]).

use std::sync::Arc;

use crate::registry::DependencyRegistry;

#[cfg(unix)]
type Hangups = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangups = std::convert::Infallible;

/// How often the configuration file's modification time is checked.
const RELOAD_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Re-reads the configuration on SIGHUP or when its file changes, and applies it to the running
/// dependencies (see [`DependencyRegistry::reload`]). An invalid file is rejected with its errors
/// logged, and the configuration in force stays.
async fn reload_on_change(registry: Arc<DependencyRegistry>, mut hangups: Option<Hangups>) {
    let Some(path) = registry.source().map(std::path::Path::to_owned) else { return };
    let modified = |path: &std::path::Path| std::fs::metadata(path).and_then(|meta| meta.modified()).ok();
    let mut last_modified = modified(&path);
    let mut poll = tokio::time::interval(RELOAD_POLL);
    loop {
        let hangup = async {
            match hangups.as_mut() {
                #[cfg(unix)]
                Some(hangups) => {
                    hangups.recv().await;
                }
                _ => std::future::pending().await,
            }
        };
        let trigger = tokio::select! {
            () = hangup => "SIGHUP",
            _ = poll.tick() => {
                let now = modified(&path);
                if now == last_modified {
                    continue;
                }
                last_modified = now;
                "file changed"
            }
        };
        match registry.reload_from_source() {
            Ok(_) => tracing::info!(trigger, path = %path.display(), "configuration reloaded"),
            Err(errors) => {
                tracing::error!(trigger, %errors, "configuration reload rejected; the configuration in force stays")
            }
        }
    }
}

/// Starts reloading `registry` from its file for as long as the task runs. The SIGHUP handler is
/// registered before this returns, so a SIGHUP can never meet the default action (terminate).
pub(super) fn spawn(registry: Arc<DependencyRegistry>) -> tokio::task::JoinHandle<()> {
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    #[cfg(not(unix))]
    let hangups = None;
    tokio::spawn(reload_on_change(registry, hangups))
}
