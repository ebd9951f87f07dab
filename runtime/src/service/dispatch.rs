//! What connections are served by: the HTTP router alone, or HTTP and gRPC by content type.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use tower_service::Service;

#[derive(Debug, Clone)]
pub(super) enum Dispatch {
    Http(Router),
    #[cfg(feature = "grpc")]
    Hybrid {
        http: Router,
        grpc: Router,
    },
}

impl Dispatch {
    /// HTTP routes alone. `with_state` makes every handler a route once, here, as `axum::serve`
    /// does: a router called without it builds the route of the handler on every request.
    pub(super) fn http(http: Router) -> Self {
        Dispatch::Http(http.with_state(()))
    }

    /// HTTP routes and gRPC services on one port.
    #[cfg(feature = "grpc")]
    pub(super) fn hybrid(http: Router, grpc: Router) -> Self {
        Dispatch::Hybrid { http: http.with_state(()), grpc: grpc.with_state(()) }
    }
}

impl Service<Request> for Dispatch {
    type Response = Response;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Routers are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self {
            Dispatch::Http(router) => router.call(request),
            #[cfg(feature = "grpc")]
            Dispatch::Hybrid { grpc, .. } if super::grpc::is_grpc(&request) => grpc.call(request),
            #[cfg(feature = "grpc")]
            Dispatch::Hybrid { http, .. } => http.call(request),
        }
    }
}
