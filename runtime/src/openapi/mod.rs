//! OpenAPI 3.1 descriptions of a `#[service]`'s routes, served at `GET /openapi.json`.
//!
//! With `[openapi]` in the `marty.toml` the macros read, `#[service]` describes every route when it
//! compiles: its method and path, the path and query parameters, the JSON body, the responses, the
//! caller it requires (`[security]`, `#[authorize]`) and the method's doc comment (its first
//! paragraph the summary, all of it the description). Schemas come from the types themselves through
//! [utoipa](https://docs.rs/utoipa): derive `utoipa::ToSchema` on bodies and answers and
//! `utoipa::IntoParams` on query structs (with `utoipa = "5"` in your `Cargo.toml`).
//!
//! ```toml
//! [openapi]
//! path = "/openapi.json"       # the default
//! title = "Orders"             # default: the service's name; the version is the crate's
//! description = "Places and follows orders"
//! ui = "/docs"                 # a browsable page (feature `openapi-ui`)
//! ```
//!
//! | in the method | in the description |
//! |---|---|
//! | `Json<T>` argument | a required `application/json` body of `T`'s schema |
//! | `Path<T>` | the path's `{parameters}` in order: `T` a `String`, `bool`, integer or float, or a tuple of up to 4 of them (your own type: `impl PathParameter`); a `{parameter}` no `Path` reads is a string |
//! | `Query<T>` | `T`'s fields as query parameters (`T: IntoParams`) |
//! | `String` / `Bytes` argument | a `text/plain` / `application/octet-stream` body |
//! | `HeaderMap`, `Method`, `Uri`, `Extension<T>`, `ConnectInfo<T>`, `Principal` | nothing |
//! | returns `Json<T>` | `200` with `T`'s schema; `String`: `text/plain`; `()`: empty |
//! | returns `(StatusCode, R)` or `StatusCode` | `2XX`: the status is chosen at run time |
//! | returns `Result<R, E>` | `R`'s answer, and the statuses `E` declares ([`DescribeProblems`]) |
//!
//! Every operation also lists the `application/problem+json` answers Marty itself gives: 400
//! (unreadable path, query or body), 413, 422, 500, 503, 504; 415 with a body; 401 (and 403 with
//! roles or scopes) where a caller is required; 429 where `[rate_limit]` limits the route.
//!
//! A type Marty cannot describe is a compile error at the type saying what to derive or implement.
//! Your own extractor describes itself with an impl of [`DescribeArgument`] (an empty one
//! describes nothing), an error type lists its statuses with [`DescribeProblems`]. A route that
//! should not be described (it answers with `impl IntoResponse`, streams, or takes any body) is
//! marked `#[undescribed]` and appears with a free-form body and answers.
//!
//! For client generators in CI, `cargo marty openapi` (or [`OUT_VARIABLE`] set by hand) has the
//! service write its description to a file and exit instead of serving: once its configuration is
//! loaded (so `${VAR}`s without a default must be set) and before `server_with` builds its state.

mod document;
#[cfg(feature = "openapi-ui")]
mod ui;

/// The environment variable that asks a service for its description instead of serving: the file
/// to write (`-`: standard output). The service writes it once its configuration is loaded, before
/// it builds its state (no database is needed), and exits; `cargo marty openapi` sets it.
pub const OUT_VARIABLE: &str = "MARTY_OPENAPI_OUT";

pub(crate) use document::document;
#[cfg(feature = "openapi-ui")]
pub(crate) use ui::page as ui_page;

use std::collections::BTreeMap;

use axum::extract::{Json, Path, Query};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{json, Value};
use utoipa::{IntoParams, PartialSchema, ToSchema};

/// One route's description, filled in by the code `#[service]` generates from the route's
/// arguments and return type.
#[derive(Debug, Clone)]
pub struct Operation {
    pub(crate) method: &'static str,
    pub(crate) path: &'static str,
    pub(crate) id: &'static str,
    pub(crate) docs: &'static str,
    pub(crate) parameters: Vec<Value>,
    /// The path's `{names}` not yet given a type by a `Path<T>`.
    unnamed: std::vec::IntoIter<String>,
    pub(crate) body: Option<Value>,
    pub(crate) responses: BTreeMap<String, Value>,
    pub(crate) schemas: BTreeMap<String, Value>,
    pub(crate) free_form: bool,
}

impl Operation {
    #[doc(hidden)]
    pub fn new(method: &'static str, path: &'static str, id: &'static str, docs: &'static str) -> Self {
        let names: Vec<String> = path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| name.trim_start_matches('*').to_owned())
            .collect();
        Operation {
            method,
            path,
            id,
            docs,
            parameters: Vec::new(),
            unnamed: names.into_iter(),
            body: None,
            responses: BTreeMap::new(),
            schemas: BTreeMap::new(),
            free_form: false,
        }
    }

    /// `#[undescribed]`: any body, any answer.
    #[doc(hidden)]
    pub fn free_form(&mut self) {
        self.free_form = true;
        self.body = Some(json!({ "content": { "*/*": { "schema": {} } } }));
        self.responses.insert("default".into(), json!({ "description": "Not described (`#[undescribed]`)" }));
    }

    /// A parameter object (`{"name", "in": "header" | "query" | "cookie", "schema", ..}`), for an
    /// extractor of your own that reads one.
    pub fn parameter(&mut self, parameter: Value) {
        self.parameters.push(parameter);
    }

    /// The next `{name}` of the path, with this schema.
    pub fn path_parameter(&mut self, schema: Value) {
        let Some(name) = self.unnamed.next() else { return };
        self.parameters.push(json!({ "name": name, "in": "path", "required": true, "schema": schema }));
    }

    /// A required body of this content type and schema.
    pub fn body(&mut self, content_type: &str, schema: Value) {
        self.body = Some(json!({ "required": true, "content": { content_type: { "schema": schema } } }));
    }

    /// An answer with `status` (`"200"`, `"2XX"`), and its content when it has one.
    pub fn response(&mut self, status: &str, description: &str, content: Option<(&str, Value)>) {
        let mut response = json!({ "description": description });
        if let Some((content_type, schema)) = content {
            response["content"] = json!({ content_type: { "schema": schema } });
        }
        self.responses.insert(status.to_owned(), response);
    }

    /// `T`'s schema, with the named schemas it refers to added to the components.
    pub fn schema_of<T: ToSchema>(&mut self) -> Value {
        let mut named = Vec::new();
        T::schemas(&mut named);
        for (name, schema) in named {
            self.schemas.insert(name, to_value(&schema));
        }
        to_value(&T::schema())
    }

    /// Moves `"200"` to `"2XX"`: a handler that returns its status chooses it at run time.
    fn status_chosen_at_run_time(&mut self) {
        if let Some(ok) = self.responses.remove("200") {
            self.responses.insert("2XX".into(), ok);
        }
    }
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// What a handler's argument adds to its route's description.
#[diagnostic::on_unimplemented(
    message = "the OpenAPI description cannot describe the argument `{Self}`",
    label = "not describable",
    note = "a `Json<T>` body needs `#[derive(utoipa::ToSchema)]` on `T`, a `Query<T>` needs `#[derive(utoipa::IntoParams)]`, a `Path<T>` takes one value or a tuple of them",
    note = "for your own extractor, `impl marty::openapi::DescribeArgument for {Self} {{}}` describes nothing; or mark the route `#[undescribed]`"
)]
pub trait DescribeArgument {
    /// Adds what the argument reads (a body, parameters) to `operation`.
    fn describe(operation: &mut Operation) {
        let _ = operation;
    }
}

/// What a handler's return type adds to its route's description.
#[diagnostic::on_unimplemented(
    message = "the OpenAPI description cannot describe the answer `{Self}`",
    label = "not describable",
    note = "describable: `Json<T>` with `#[derive(utoipa::ToSchema)]` on `T`, `String`, `()`, `StatusCode`, `(StatusCode, R)`, `Result<R, E>` with `E: marty::openapi::DescribeProblems`",
    note = "or `impl marty::openapi::DescribeResponse for {Self}`, or mark the route `#[undescribed]`"
)]
pub trait DescribeResponse {
    /// Adds the answers to `operation`.
    fn describe(operation: &mut Operation);
}

/// The error statuses an error type answers with, each an `application/problem+json` answer in
/// the description.
///
/// ```
/// # #[derive(Debug)] enum StoreError { NotFound(String) }
/// impl marty::openapi::DescribeProblems for StoreError {
///     const STATUSES: &'static [u16] = &[404, 409, 422, 503];
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "the OpenAPI description does not know which statuses `{Self}` answers with",
    label = "its statuses are not declared",
    note = "declare them: `impl marty::openapi::DescribeProblems for {Self} {{ const STATUSES: &'static [u16] = &[404, 422]; }}`"
)]
pub trait DescribeProblems {
    /// The statuses, e.g. `&[404, 409, 422]`; none: any client or server error (`4XX`, `5XX`).
    const STATUSES: &'static [u16];
}

/// A path parameter's value: one of the path's `{names}`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be described as a path parameter",
    note = "use a string, integer, float or bool, or a tuple of them, in `Path<..>`, one per `{{name}}` of the path"
)]
pub trait PathParameter {
    /// Gives the next `{name}`s of the path their schemas.
    fn describe(operation: &mut Operation);
}

macro_rules! path_parameters {
    ($($ty:ty),*) => {$(
        impl PathParameter for $ty {
            fn describe(operation: &mut Operation) {
                operation.path_parameter(to_value(&<$ty as PartialSchema>::schema()));
            }
        }
    )*};
}
path_parameters!(String, bool, i8, i16, i32, i64, u8, u16, u32, u64, usize, isize, f32, f64);

macro_rules! path_tuples {
    ($(($($name:ident),+)),*) => {$(
        impl<$($name: PathParameter),+> PathParameter for ($($name,)+) {
            fn describe(operation: &mut Operation) {
                $($name::describe(operation);)+
            }
        }
    )*};
}
path_tuples!((A), (A, B), (A, B, C), (A, B, C, D));

impl<T: PathParameter> DescribeArgument for Path<T> {
    fn describe(operation: &mut Operation) {
        T::describe(operation);
    }
}

impl<T: IntoParams> DescribeArgument for Query<T> {
    fn describe(operation: &mut Operation) {
        let parameters = T::into_params(|| Some(utoipa::openapi::path::ParameterIn::Query));
        operation.parameters.extend(parameters.iter().map(to_value));
    }
}

impl<T: ToSchema> DescribeArgument for Json<T> {
    fn describe(operation: &mut Operation) {
        let schema = operation.schema_of::<T>();
        operation.body("application/json", schema);
    }
}

impl DescribeArgument for String {
    fn describe(operation: &mut Operation) {
        operation.body("text/plain", json!({ "type": "string" }));
    }
}

impl DescribeArgument for bytes::Bytes {
    fn describe(operation: &mut Operation) {
        operation.body("application/octet-stream", json!({}));
    }
}

impl DescribeArgument for HeaderMap {}
impl DescribeArgument for Method {}
impl DescribeArgument for Uri {}
/// What a layer put in the request (e.g. a `ClientCertificate`): nothing the client sends.
impl<T> DescribeArgument for axum::Extension<T> {}
impl<T> DescribeArgument for Option<axum::Extension<T>> {}
/// The peer's address: nothing the client sends.
impl<T> DescribeArgument for axum::extract::ConnectInfo<T> {}
#[cfg(feature = "security")]
impl DescribeArgument for crate::security::Principal {}
#[cfg(feature = "security")]
impl DescribeArgument for Option<crate::security::Principal> {}

impl<T: ToSchema> DescribeResponse for Json<T> {
    fn describe(operation: &mut Operation) {
        let schema = operation.schema_of::<T>();
        operation.response("200", "OK", Some(("application/json", schema)));
    }
}

impl DescribeResponse for String {
    fn describe(operation: &mut Operation) {
        operation.response("200", "OK", Some(("text/plain", json!({ "type": "string" }))));
    }
}

impl DescribeResponse for &'static str {
    fn describe(operation: &mut Operation) {
        <String as DescribeResponse>::describe(operation);
    }
}

impl DescribeResponse for () {
    fn describe(operation: &mut Operation) {
        operation.response("200", "OK, with no content", None);
    }
}

impl DescribeResponse for StatusCode {
    fn describe(operation: &mut Operation) {
        operation.response("2XX", "Success, with no content", None);
    }
}

impl<R: DescribeResponse> DescribeResponse for (StatusCode, R) {
    fn describe(operation: &mut Operation) {
        R::describe(operation);
        operation.status_chosen_at_run_time();
    }
}

impl<R: DescribeResponse, E: DescribeProblems> DescribeResponse for Result<R, E> {
    fn describe(operation: &mut Operation) {
        R::describe(operation);
        if E::STATUSES.is_empty() {
            operation.responses.insert("4XX".into(), document::problem_response("Client error"));
            operation.responses.insert("5XX".into(), document::problem_response("Server error"));
        }
        for status in E::STATUSES {
            let reason = StatusCode::from_u16(*status).ok().and_then(|status| status.canonical_reason());
            operation.responses.insert(status.to_string(), document::problem_response(reason.unwrap_or("Error")));
        }
    }
}

/// `Problem` can carry any status: described as any client or server error.
impl DescribeProblems for crate::service::Problem {
    const STATUSES: &'static [u16] = &[];
}

/// The operations `#[service]` described, in route order.
#[derive(Debug, Default)]
pub struct Operations(pub(crate) Vec<Operation>);

impl Operations {
    /// Adds a described operation; a `{name}` of its path that no `Path<T>` read is a string (the
    /// description must declare every parameter its path template has).
    #[doc(hidden)]
    pub fn push(&mut self, mut operation: Operation) {
        for _ in 0..operation.unnamed.len() {
            operation.path_parameter(json!({ "type": "string" }));
        }
        self.0.push(operation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parameter_of_the_path_is_declared_read_or_not() {
        let mut operations = Operations::default();
        let mut operation = Operation::new("GET", "/orders/{id}/lines/{line}", "line", "");
        <Path<u32> as DescribeArgument>::describe(&mut operation);
        operations.push(operation);
        let parameters = &operations.0[0].parameters;
        assert_eq!(parameters.len(), 2, "{parameters:?}");
        assert_eq!((&parameters[0]["name"], &parameters[0]["schema"]["type"]), (&json!("id"), &json!("integer")));
        assert_eq!((&parameters[1]["name"], &parameters[1]["schema"]["type"]), (&json!("line"), &json!("string")));
    }
}
