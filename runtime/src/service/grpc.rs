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

    /// The encoded `FileDescriptorSet`s given for reflection.
    pub(crate) fn descriptors(&self) -> &[&'static [u8]] {
        &self.descriptors
    }

    /// The gRPC router (services, health, and reflection unless `reflection_apart`), the router of
    /// the management port when `reflection_apart` (health and reflection), and the health reporter
    /// to keep in step.
    pub(crate) fn into_routers(
        self,
        reflection_apart: bool,
    ) -> (Router, Option<Router>, tonic_health::server::HealthReporter) {
        let (reporter, health) = tonic_health::server::health_reporter();
        let reflection = self.reflection_service();
        let mut api = match self.routes {
            Some(routes) => routes.add_service(health.clone()),
            None => tonic::service::Routes::new(health.clone()),
        };
        let management = match (reflection_apart, reflection) {
            (true, reflection) => {
                let mut management = tonic::service::Routes::new(health);
                if let Some(reflection) = reflection {
                    management = management.add_service(reflection);
                }
                Some(management.into_axum_router())
            }
            (false, Some(reflection)) => {
                api = api.add_service(reflection);
                None
            }
            (false, None) => None,
        };
        (api.into_axum_router(), management, reporter)
    }

    fn reflection_service(
        &self,
    ) -> Option<tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>>
    {
        if self.descriptors.is_empty() {
            return None;
        }
        let mut reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for descriptors in &self.descriptors {
            reflection = reflection.register_encoded_file_descriptor_set(descriptors);
        }
        reflection
            .build_v1()
            .inspect_err(
                |error| tracing::error!(%error, "gRPC reflection disabled: the file descriptor set does not decode"),
            )
            .ok()
    }
}

/// Puts right the two status codes tonic answers a bad request message with, as the gRPC status code
/// guide has them: a message that does not decode is the client's `INVALID_ARGUMENT` (tonic says
/// `INTERNAL`, which reads as the server's fault), and one over the size limit is
/// `RESOURCE_EXHAUSTED` (tonic says `OUT_OF_RANGE`). Both come back before the handler runs, as a
/// trailers-only response carrying the tonic `Status`.
pub(crate) async fn spec_status_codes(mut response: axum::response::Response) -> axum::response::Response {
    let Some(status) = response.extensions().get::<tonic::Status>() else { return response };
    let code = match status.code() {
        tonic::Code::Internal if status.message().starts_with("failed to decode Protobuf message") => {
            tonic::Code::InvalidArgument
        }
        tonic::Code::OutOfRange if status.message().starts_with("Error, decoded message length too large") => {
            tonic::Code::ResourceExhausted
        }
        _ => return response,
    };
    response.headers_mut().insert("grpc-status", http::HeaderValue::from(code as i32));
    response
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
