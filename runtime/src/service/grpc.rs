//! gRPC beside HTTP on one port: requests whose content type is `application/grpc` go to the gRPC
//! services (tonic), everything else to the HTTP routes, both behind the same [`super::HttpLayer`].
//! The standard `grpc.health.v1.Health` service follows readiness (`NOT_SERVING` by the rule of
//! `/readyz`: starting, draining, a failing probe, a required dependency down), and reflection
//! serves the descriptors given.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tower_service::Service;

use super::health::HealthState;

/// The gRPC services of one service, built by `#[service(grpc(..))]` or by hand.
#[derive(Debug, Default)]
pub struct GrpcServices {
    routes: Option<tonic::service::Routes>,
    names: Vec<&'static str>,
    descriptors: Vec<&'static [u8]>,
}

impl GrpcServices {
    /// No services yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tonic-generated server (e.g. `OrdersServer::from_arc(state)`).
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<http::Request<tonic::body::Body>, Error = Infallible> + NamedService + Clone + Send + Sync + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes = Some(match self.routes.take() {
            Some(routes) => routes.add_service(service),
            None => tonic::service::Routes::new(service),
        });
        self
    }

    /// Serves reflection for the services described by this encoded `FileDescriptorSet` (what
    /// `tonic-prost-build` writes with `file_descriptor_set_path`).
    pub fn reflection(mut self, file_descriptor_set: &'static [u8]) -> Self {
        self.descriptors.push(file_descriptor_set);
        self
    }

    /// The names of the services added, as gRPC health reports them.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// The gRPC router (services, health, reflection) and the health reporter to keep in step.
    pub(crate) fn into_router(self) -> (Router, tonic_health::server::HealthReporter) {
        let (reporter, health) = tonic_health::server::health_reporter();
        let mut routes = match self.routes {
            Some(routes) => routes.add_service(health),
            None => tonic::service::Routes::new(health),
        };
        if !self.descriptors.is_empty() {
            let mut reflection = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
            for descriptors in self.descriptors {
                reflection = reflection.register_encoded_file_descriptor_set(descriptors);
            }
            match reflection.build_v1() {
                Ok(reflection) => routes = routes.add_service(reflection),
                Err(error) => {
                    tracing::error!(%error, "gRPC reflection disabled: the file descriptor set does not decode")
                }
            }
        }
        (routes.into_axum_router(), reporter)
    }
}

/// Whether a request is gRPC (any `application/grpc` content type, `+proto` and the like included).
pub(crate) fn is_grpc(request: &Request) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// Keeps gRPC health in step with readiness, for the whole server ("") and each service, by the same
/// rule as `/readyz`: starting and draining show at once, breakers within 100 ms, and the probes are
/// run once a second.
pub(crate) async fn follow_readiness(
    reporter: tonic_health::server::HealthReporter,
    names: Vec<&'static str>,
    state: HealthState,
) {
    const PROBE_EVERY: Duration = Duration::from_secs(1);
    let mut last = None;
    let mut probed: Option<(tokio::time::Instant, bool)> = None;
    loop {
        let probes_pass = match probed {
            Some((at, passed)) if at.elapsed() < PROBE_EVERY => passed,
            _ => {
                let passed = super::health::probes_pass(&state).await;
                probed = Some((tokio::time::Instant::now(), passed));
                passed
            }
        };
        let ready = probes_pass && super::health::ready_but_for_probes(&state);
        let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
        if last != Some(status) {
            tracing::info!(serving = ready, "gRPC health follows readiness");
            for name in std::iter::once("").chain(names.iter().copied()) {
                reporter.set_service_status(name, status).await;
            }
            last = Some(status);
        }
        tokio::select! {
            () = state.readiness.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}
