//! Attribute macros of the Marty framework. Depend on `marty`, which re-exports them; see its docs for
//! the arguments, examples, expansions and errors of each attribute.
//!
//! Entry points stay thin: each converts to `proc_macro2` and calls an `expand` fn, so every expansion
//! is unit-testable. Set `MARTY_MACROS_DEBUG=1` to print expansions while compiling.

mod call;
mod common;
mod event;
mod saga;
mod service;

use marty_config::DependencyKind;
use proc_macro::TokenStream;

/// Runs an async fn through the resilience policy of a `kind = "database"` dependency declared in
/// `marty.toml`: retry -> circuit breaker -> timeout -> bulkhead -> the call, with a `marty.call`
/// tracing span and Prometheus metrics. `#[api_call]` and `#[cache_call]` are the same for `kind = "api"`
/// and `kind = "cache"` dependencies.
///
/// # Arguments
///
/// | argument | required | meaning |
/// |---|---|---|
/// | `dependency = "orders_db"` | yes | a `[dependencies.orders_db]` of this attribute's kind |
/// | `operation = "load_order"` | no | the `operation` label of spans and metrics; default: the fn name |
/// | `timeout = "2s"` | no | this call's timeout, replacing the dependency's (bulkhead wait counts against it) |
/// | `retry = false` | no | one attempt; the body may then consume its arguments |
/// | `retry(max_attempts = 5, backoff = "fixed", initial = "10ms", max = "1s", jitter = false)` | no | replaces the named fields of the dependency's `retry` |
/// | `fallback = path` | no | called with the final error: `path(self, error).await` for methods, `path(error).await` otherwise; returns the fn's `Result` |
/// | `classify = path` | no | `fn(&E) -> marty::ErrorClass`, replacing `E`'s `marty::Classify` impl for this call |
/// | `config = "path/marty.toml"` | no | the configuration to check against, relative to `Cargo.toml` (default: `$MARTY_CONFIG`, else `marty.toml`) |
/// | `crate = "my_marty"` | no | the path of the `marty` crate when it is renamed in `Cargo.toml` |
///
/// The fn must be `async` and return `Result<T, E>` (any alias of it) where `E: From<marty::Error>`
/// and, unless `classify` is given, `E: marty::Classify`. With retry on, the body runs once per
/// attempt, so it must not move its arguments out (take them by reference, or set `retry = false`).
///
/// # Examples
///
/// ```no_run
/// use marty::CallError;
///
/// type OrderResult = Result<String, CallError<std::io::Error>>;
///
/// struct OrderRepository {
///     last_seen: std::sync::Mutex<String>,
/// }
///
/// impl OrderRepository {
///     #[marty::database_call(dependency = "orders_db", timeout = "2s", fallback = Self::last_seen)]
///     async fn load(&self, id: i64) -> OrderResult {
///         // The query; its error says whether a retry may help (`marty::Classify`).
///         Ok(format!("order {id}"))
///     }
///
///     /// Receives the final error, after retries, or at once when the breaker is open.
///     async fn last_seen(&self, _error: CallError<std::io::Error>) -> OrderResult {
///         Ok(self.last_seen.lock().unwrap().clone())
///     }
/// }
/// ```
///
/// # Expands to
///
/// For `#[database_call(dependency = "orders_db")]` on `async fn load(&self, id: i64) ->
/// Result<Order, AppError> { self.find(id).await }` (`$MANIFEST_DIR` is the crate's directory; a
/// unit test keeps this text equal to the real expansion). The call site resolves its policy once
/// and keeps it in the static; each attempt runs the body in its own `async` block, so `?` and
/// `return` keep their meaning:
///
/// ```text
/// async fn load(&self, id: i64) -> Result<Order, AppError> {
///     #[doc(hidden)]
///     static __MARTY_CALL_SITE: ::marty::__private::CallSite = ::marty::__private::CallSite::new(
///         "orders_db",
///         ::marty::__private::DependencyKind::Database,
///         "load",
///         ::marty::__private::core::option::Option::None,
///         ::marty::__private::RetryOverride::Inherit,
///         "$MANIFEST_DIR/marty.toml",
///         {
///             let _ = ::marty::__private::core::option_env!("MARTY_CONFIG");
///             ::marty::__private::core::include_str!("$MANIFEST_DIR/marty.toml")
///         },
///     );
///     let __marty_convert = ::marty::__private::error_converter::<
///         Result<Order, AppError>,
///     >();
///     let __marty_classify: fn(&_) -> _ = ::marty::__private::classifier::<
///         Result<Order, AppError>,
///     >();
///     let __marty_policy = match __MARTY_CALL_SITE.policy() {
///         ::marty::__private::core::result::Result::Ok(policy) => policy,
///         ::marty::__private::core::result::Result::Err(__marty_config_error) => {
///             return ::marty::__private::call_return::<
///                 Result<Order, AppError>,
///             >(
///                 ::marty::__private::core::result::Result::Err(
///                     __marty_convert(__marty_config_error),
///                 ),
///             );
///         }
///     };
///     let mut __marty_call = __marty_policy.begin();
///     let __marty_result = loop {
///         if let ::marty::__private::core::ops::ControlFlow::Break(__marty_result) = __marty_call
///             .attempt(
///                 ::marty::__private::attempt_future::<
///                     Result<Order, AppError>,
///                     _,
///                 >(async { self.find(id).await }),
///                 __marty_classify,
///                 __marty_convert,
///             )
///             .await
///         {
///             break __marty_result;
///         }
///     };
///     ::marty::__private::call_return::<Result<Order, AppError>>(__marty_result)
/// }
/// ```
///
/// The registry is the one installed with `marty::DependencyRegistry::install_global`, or else the
/// one loaded on first use from `$MARTY_CONFIG`, the checked `marty.toml`, or the text it had when
/// compiled, with `MARTY__...` overrides and `${VAR}` expansion applied.
///
/// # Errors
///
/// At compile time, with the fix in the message: an unknown or repeated argument, a dependency that
/// `marty.toml` does not declare (the nearest name is suggested) or declares with another kind, a
/// malformed duration, a non-async fn, a return type that is not a `Result`, an error type that cannot
/// hold Marty's errors or is not classified, and every error in `marty.toml` itself (file, line, key).
/// Cargo rebuilds the crate when `marty.toml` changes.
///
/// At run time the fn returns, converted into `E`: `marty::Error::Rejected` (bulkhead full past
/// `max_wait`), `Timeout`, `CircuitOpen` (no call made), or `Config` if the configuration found at
/// startup does not load.
#[proc_macro_attribute]
pub fn database_call(args: TokenStream, item: TokenStream) -> TokenStream {
    call::expand(DependencyKind::Database, args.into(), item.into()).into()
}

/// `#[database_call]` for a `kind = "api"` dependency (default timeout 15s, bulkhead 100). See
/// `database_call` for arguments, expansion and errors.
#[proc_macro_attribute]
pub fn api_call(args: TokenStream, item: TokenStream) -> TokenStream {
    call::expand(DependencyKind::Api, args.into(), item.into()).into()
}

/// `#[database_call]` for a `kind = "cache"` dependency (default timeout 2s, bulkhead 100). See
/// `database_call` for arguments, expansion and errors.
#[proc_macro_attribute]
pub fn cache_call(args: TokenStream, item: TokenStream) -> TokenStream {
    call::expand(DependencyKind::Cache, args.into(), item.into()).into()
}

/// Serves an `impl` block's routed methods over HTTP, with `/healthz`, `/readyz`, `/metrics`, request
/// ids, HTTP metrics, problem+json errors and graceful shutdown.
///
/// # Arguments
///
/// | argument | meaning |
/// |---|---|
/// | `name = "orders"` | the service's name in telemetry; default `[service] name`, else the crate name |
/// | `config = "path/marty.toml"` | the configuration, relative to `Cargo.toml` (default `$MARTY_CONFIG`, else `marty.toml`) |
/// | `crate = "my_marty"` | the path of `marty` when renamed |
///
/// Methods marked `#[health_check]` (`async fn ..(&self) -> Result<T, E>`) are readiness probes:
/// `/readyz` runs them on every request (2s each at most) and reports 503 while one fails.
///
/// Methods marked `#[event_handler(..)]` consume events: `async fn ..(&self, event: E) -> Result<(), Err>`
/// where `E: marty::Event` and `Err: Display`, optionally taking the inbox transaction as a third
/// argument (`tx: &mut sqlx::Transaction<'_, sqlx::Postgres>`), in which the framework records the
/// event for the group and which it commits when the handler returns `Ok`. Arguments: `topic` (checked
/// against `E::TOPIC`), `group` (default: the service's name), `inbox` (default `[outbox] store`),
/// `max_attempts` (5), `concurrency` (8 lanes; one key never runs concurrently), `backoff` (first
/// retry's ceiling, "100ms"), `ack_wait` ("5s"). An undecodable payload is dead-lettered at once; an
/// `Err` is retried with backoff and dead-lettered after the last attempt.
///
/// Methods marked `#[get("/path")]`, `#[post(..)]`, `#[put(..)]`, `#[patch(..)]` or `#[delete(..)]` are
/// routes: `async fn`s taking `&self` and then axum extractors, returning anything axum can turn into
/// a response (`marty::Error` becomes problem+json). Paths are axum templates (`/orders/{id}`).
/// `#[database_call]` and other attributes on the methods keep working.
///
/// With `[security]` in `marty.toml` (feature `security`), a route requires what
/// `[security] default` says, unless it is marked `#[public]` (anyone) or
/// `#[authorize(roles = ["admin", "clerk"], scopes = ["orders:write"])]` (an authenticated caller
/// with **any** of the roles and **all** of the scopes; bare `#[authorize]`: any authenticated
/// caller). Roles and scopes must be declared under `[security]`; see `marty::security`.
/// `#[audit]` writes the route's allowed requests to the audit trail too (refusals always are);
/// see `marty::audit`.
///
/// With `[openapi]` in `marty.toml` (feature `openapi`), every route is described when it compiles
/// (its arguments, answer, caller and doc comment) and the description is served at
/// `GET /openapi.json`; a type that cannot be described is a compile error at the type, and a route
/// marked `#[undescribed]` appears with a free-form body and answers. See `marty::openapi`.
///
/// # Examples
///
/// ```no_run
/// use marty::axum::extract::{Json, Path};
/// use marty::axum::http::StatusCode;
/// use marty::service::Problem;
///
/// #[derive(serde::Serialize, Clone)]
/// struct Order {
///     id: u64,
///     item: String,
/// }
///
/// struct Orders {
///     orders: Vec<Order>,
/// }
///
/// #[marty::service]
/// impl Orders {
///     #[get("/orders/{id}")]
///     async fn get_order(&self, Path(id): Path<u64>) -> Result<Json<Order>, Problem> {
///         let order = self.orders.iter().find(|order| order.id == id).cloned();
///         order.map(Json).ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, format!("no order {id}")))
///     }
///
///     #[health_check]
///     async fn stock_feed(&self) -> Result<(), std::io::Error> {
///         Ok(())
///     }
/// }
///
/// #[tokio::main]
/// async fn main() -> Result<(), marty::service::ServeError> {
///     marty::service::serve(Orders { orders: Vec::new() }).await
/// }
/// ```
///
/// # Expands to
///
/// The impl block without the route attributes, and `impl marty::service::Routes for Orders`, whose
/// `routes(self: Arc<Self>)` builds an axum `Router` with one closure per route calling the method.
///
/// # Errors
///
/// At compile time: a route path that does not start with `/`, has a malformed or repeated parameter
/// or uses the old `:param` syntax; the same method and path twice; a handler that is not async or
/// does not take `&self`; a reference argument; a generic or trait impl; a missing or invalid
/// `marty.toml`; a role or scope `[security]` does not declare (the nearest is suggested);
/// `#[authorize]` without `[security]` or without a way to authenticate, or with `#[public]`;
/// `#[audit]` or `#[undescribed]` with arguments or off a route; `[rate_limit.routes]` naming a
/// route the service does not have; with `[openapi]`, an argument or answer that cannot be described,
/// an `impl Trait` answer on a described route, or a route at the description's path.
#[proc_macro_attribute]
pub fn service(args: TokenStream, item: TokenStream) -> TokenStream {
    if !cfg!(feature = "http") {
        let inner = &[
            "get",
            "post",
            "put",
            "patch",
            "delete",
            "health_check",
            "event_handler",
            "public",
            "authorize",
            "audit",
            "undescribed",
        ];
        return feature_missing(item, "#[service]", "`http` feature (on by default)", "marty = \"0.1\"", inner);
    }
    service::expand(args.into(), item.into()).into()
}

/// Marks the `impl` block of a saga's state: its `#[saga_step]` methods run in order, persisted,
/// and on failure the compensations of the steps that ran undo them in reverse. See
/// `marty::saga` for the semantics.
///
/// # Arguments
///
/// | argument | default | meaning |
/// |---|---|---|
/// | `name = "place_order"` | the type's name in snake case | the name stored with each saga; keep it stable |
/// | `store = "orders_db"` | `[outbox] store` | the database dependency (`marty.toml`) holding the saga tables |
/// | `env = Clients` | `()` | the type steps reach through `ctx.env()` |
/// | `timeout = "30s"` | none | how long the forward steps may take in all; past it, the saga compensates |
/// | `config = "marty.toml"` | `MARTY_CONFIG`, else `marty.toml` | the configuration checked at compile time |
/// | `crate = "::marty"` | `::marty` | the runtime crate's path, when renamed |
///
/// `#[saga_step(compensate = method, timeout = "5s", max_attempts = 3)]` marks a step: `compensate`
/// names the method of the same impl that undoes it, `timeout` bounds each attempt, `max_attempts`
/// (default 3) counts failed, timed-out and interrupted attempts. Steps and compensations are
/// `async fn name(&mut self [, ctx: &mut StepContext<Env>]) -> Result<(), E>` with
/// `E: Display + marty::Classify` (only transient errors are retried).
///
/// # Examples
///
/// ```no_run
/// use marty::saga::{StepContext, StepError};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct PlaceOrder {
///     item: String,
///     confirmed: bool,
/// }
///
/// struct Clients; // what the steps call, through `ctx.env()`
/// # impl Clients {
/// #     async fn reserve(&self, _key: &str, _item: &str) -> Result<(), StepError> { Ok(()) }
/// #     async fn release(&self, _key: &str) -> Result<(), StepError> { Ok(()) }
/// # }
///
/// #[marty::saga(store = "orders_db", env = Clients)]
/// impl PlaceOrder {
///     #[saga_step(compensate = release_stock, timeout = "2s")]
///     async fn reserve_stock(&mut self, ctx: &mut StepContext<Clients>) -> Result<(), StepError> {
///         ctx.env().reserve(&ctx.idempotency_key(), &self.item).await
///     }
///
///     async fn release_stock(&mut self, ctx: &mut StepContext<Clients>) -> Result<(), StepError> {
///         ctx.env().release(&ctx.idempotency_key()).await
///     }
///
///     #[saga_step]
///     async fn confirm(&mut self) -> Result<(), StepError> {
///         self.confirmed = true;
///         Ok(())
///     }
/// }
/// ```
///
/// # Expands to
///
/// The impl block unchanged (minus `#[saga_step]`), plus `impl marty::saga::Saga for PlaceOrder`
/// with a static definition of the steps and two `match`es that call step `i` or its compensation.
///
/// # Errors
///
/// At compile time: no steps, a step or compensation that is not `async`, takes `self` by value or
/// more than the context, or returns nothing; a `compensate` that names no method of the impl (the
/// nearest is suggested) or names a step; a step marked twice or behind `#[cfg]`; bad durations; a
/// `store` that is not a database dependency of `marty.toml`.
#[proc_macro_attribute]
pub fn saga(args: TokenStream, item: TokenStream) -> TokenStream {
    if !cfg!(feature = "storage") {
        let enable = "marty = { version = \"0.1\", features = [\"sqlite\"] }";
        return feature_missing(item, "#[saga]", "`sqlite` or `postgres` feature", enable, &["saga_step"]);
    }
    saga::expand(args.into(), item.into()).into()
}

/// One error, on the attribute, naming the feature of `marty` that `attribute` needs; the item is
/// kept (without its inner attributes, which would each add an error of their own), so the rest of
/// the crate is still checked.
fn feature_missing(item: TokenStream, attribute: &str, feature: &str, enable: &str, inner: &[&str]) -> TokenStream {
    let message = format!("{attribute} needs marty's {feature}\nhelp: in Cargo.toml: `{enable}`");
    let mut item = proc_macro2::TokenStream::from(item);
    if let Ok(mut block) = syn::parse2::<syn::ItemImpl>(item.clone()) {
        for member in &mut block.items {
            if let syn::ImplItem::Fn(method) = member {
                method.attrs.retain(|attr| !inner.iter().any(|name| attr.path().is_ident(name)));
            }
        }
        item = quote::quote!(#block);
    }
    quote::quote!(::core::compile_error!(#message); #item).into()
}

/// Marks a step of a `#[saga]`; see `saga`.
#[proc_macro_attribute]
pub fn saga_step(_args: TokenStream, item: TokenStream) -> TokenStream {
    // Reached only when the method is not inside `#[saga]`, which removes these attributes.
    let message = "`#[saga_step]` only works on a method inside a `#[marty::saga]` impl block\nhelp: add `#[marty::saga(store = \"..\")]` to the impl block";
    let item = proc_macro2::TokenStream::from(item);
    quote::quote!(::core::compile_error!(#message); #item).into()
}

macro_rules! route_attribute {
    ($($name:ident => $doc:literal,)*) => {$(
        #[doc = $doc]
        #[proc_macro_attribute]
        pub fn $name(_args: TokenStream, item: TokenStream) -> TokenStream {
            // Reached only when the method is not inside `#[service]`, which removes these attributes.
            let message = concat!("`#[", stringify!($name), "]` only works on a method inside a `#[marty::service]` impl block\nhelp: add `#[marty::service]` to the impl block");
            let item = proc_macro2::TokenStream::from(item);
            quote::quote!(::core::compile_error!(#message); #item).into()
        }
    )*};
}

route_attribute! {
    get => "Marks a method of a `#[service]` impl block as the handler of `GET` requests to a path: `#[get(\"/orders/{id}\")]`; see `service`.",
    post => "Marks a method of a `#[service]` impl block as the handler of `POST` requests to a path: `#[post(\"/orders\")]`; see `service`.",
    put => "Marks a method of a `#[service]` impl block as the handler of `PUT` requests to a path: `#[put(\"/orders/{id}\")]`; see `service`.",
    patch => "Marks a method of a `#[service]` impl block as the handler of `PATCH` requests to a path: `#[patch(\"/orders/{id}\")]`; see `service`.",
    delete => "Marks a method of a `#[service]` impl block as the handler of `DELETE` requests to a path: `#[delete(\"/orders/{id}\")]`; see `service`.",
    health_check => "Marks a method of a `#[service]` impl block as a readiness probe, `async fn ..(&self) -> Result<T, E>`: `/readyz` runs it on every probe, 2s at most, and reports 503 while it fails (gRPC health follows the same rule); see `service`.",
    public => "Lets anyone call a route of a `#[service]` impl block, whatever `[security] default` says; see `service`.",
    authorize => "Requires an authenticated caller on a route of a `#[service]` impl block: `#[authorize(roles = [\"admin\", \"clerk\"], scopes = [\"orders:write\"])]` admits a caller with any of the roles and all of the scopes (bare `#[authorize]`: any authenticated caller); the names must be declared under `[security]` in `marty.toml`. Others get 401 (no or bad credentials) or 403; see `service`.",
    undescribed => "Leaves a route of a `#[service]` impl block out of the OpenAPI description's type checks: it is described with a free-form body and answers (for a handler answering `impl IntoResponse`, streaming, or reading any body); see `marty::openapi`.",
    audit => "Writes every allowed request to a route of a `#[service]` impl block to the audit trail (refused requests always are): one event on the `marty::audit` tracing target with who, what, decision, request id, trace id and time; see `marty::audit`.",
    event_handler => "Marks a method of a `#[service]` impl block as the consumer of one topic, `async fn ..(&self, event: E) -> Result<(), Err>`, optionally taking the inbox transaction third: `#[event_handler(topic = \"orders.placed\")]`, with `group`, `inbox`, `max_attempts`, `concurrency`, `backoff` and `ack_wait` as `service` lists them; see `service`.",
}

/// Implements `marty::Event` for a struct or enum that also derives serde's `Serialize` and
/// `Deserialize`.
///
/// # Arguments
///
/// | attribute | meaning |
/// |---|---|
/// | `#[event(topic = "orders.created")]` (required) | where it is published: dot-separated names of letters, digits, `_`, `-` |
/// | `#[event(version = 2)]` | its schema version, default 1 |
/// | `#[event(crate = "my_marty")]` | the path of `marty` when renamed |
/// | `#[event(key)]` on one field | the aggregate key: events with the same key keep their order |
///
/// # Examples
///
/// ```
/// use marty::Event;
///
/// #[derive(marty::Event, serde::Serialize, serde::Deserialize)]
/// #[event(topic = "orders.created", version = 1)]
/// struct OrderCreated {
///     #[event(key)]
///     order_id: i64,
///     total_cents: u64,
/// }
///
/// let event = OrderCreated { order_id: 7, total_cents: 1200 };
/// assert_eq!((OrderCreated::TOPIC, OrderCreated::VERSION), ("orders.created", 1));
/// assert_eq!(event.key().as_deref(), Some("7"));
/// ```
///
/// # Expands to
///
/// `impl marty::Event for OrderCreated { const TOPIC = "orders.created"; const VERSION = 1; fn key(&self)
/// -> Option<String> { Some(self.order_id.to_string()) } }`.
///
/// # Errors
///
/// A missing or malformed topic, version 0, unknown arguments, a key on more than one field or on an
/// enum's fields, a key type that does not implement `Display` (reported at the field's type),
/// generic events, unions.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    if !cfg!(feature = "events") {
        let message = "#[derive(Event)] needs marty's `events` feature (on by default)\nhelp: in Cargo.toml: `marty = { version = \"0.1\", features = [\"events\"] }`";
        return quote::quote!(::core::compile_error!(#message);).into();
    }
    event::expand(input.into()).into()
}
