//! `#[service]` on the `impl` block of a service's state: parse (the attribute's arguments and each
//! method's route attribute) -> check (route syntax, duplicates, receivers, `marty.toml`) -> codegen
//! (the `marty::service::Routes` impl). Other attributes on the methods, `#[database_call]` included,
//! are left in place and expand as usual.

mod check;
mod codegen;
mod event_handler;
mod parse;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use proc_macro2::TokenStream;

use crate::common::{finish, wrong_item};

/// A `#[service]` whose arguments, routes and configuration checked out.
pub(crate) struct ServiceModel {
    pub(crate) name: String,
    pub(crate) config_path: PathBuf,
    pub(crate) krate: Option<syn::Path>,
    /// The impl block with route attributes removed.
    pub(crate) item: syn::ItemImpl,
    pub(crate) routes: Vec<Route>,
    /// Tonic-generated server types to serve the state with.
    pub(crate) grpc: Vec<syn::Path>,
    /// The encoded file descriptor set for reflection.
    pub(crate) reflection: Option<syn::Path>,
    /// `#[health_check]` methods and their `#[cfg]`s.
    pub(crate) probes: Vec<(syn::Ident, Vec<syn::Attribute>)>,
    /// `#[event_handler]` methods.
    pub(crate) handlers: Vec<event_handler::Handler>,
    /// `[openapi]` is configured: the routes are described.
    pub(crate) described: bool,
}

/// One method served over HTTP.
pub(crate) struct Route {
    pub(crate) method: HttpMethod,
    pub(crate) path: String,
    pub(crate) handler: syn::Ident,
    /// The types of the arguments after `&self`: axum extractors.
    pub(crate) extractors: Vec<syn::Type>,
    /// The declared return type, if any.
    pub(crate) output: Option<syn::Type>,
    /// The method's `#[cfg(..)]`s, copied onto the route.
    pub(crate) cfgs: Vec<syn::Attribute>,
    /// What the route requires of its caller.
    pub(crate) requirement: Requirement,
    /// `#[audit]`: allowed requests go to the audit trail too.
    pub(crate) audit: bool,
    /// `#[undescribed]`: described with a free-form body and answers.
    pub(crate) undescribed: bool,
    /// The method's doc comment.
    pub(crate) docs: String,
}

/// What a route requires of its caller, checked against `[security]`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum Requirement {
    /// No attribute: `[security] default` decides.
    Default,
    /// `#[public]`.
    Public,
    /// `#[authorize(..)]`: any of the roles (none listed: any), all of the scopes.
    Authorize { roles: Vec<String>, scopes: Vec<String> },
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    pub(crate) const ALL: [(&'static str, HttpMethod); 5] = [
        ("get", HttpMethod::Get),
        ("post", HttpMethod::Post),
        ("put", HttpMethod::Put),
        ("patch", HttpMethod::Patch),
        ("delete", HttpMethod::Delete),
    ];

    pub(crate) fn as_str(self) -> &'static str {
        HttpMethod::ALL
            .iter()
            .find(|(_, method)| *method == self)
            .map(|(name, _)| *name)
            .expect("every method is listed")
    }
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let Ok(item_impl) = syn::parse2::<syn::ItemImpl>(item.clone()) else {
        let help = "put it on the state's impl block: `#[marty::service] impl Orders { #[get(\"/orders/{id}\")] async fn get_order(&self, ..) -> .. }`";
        return wrong_item(item, "`#[service]` goes on an `impl` block", help);
    };
    let mut errors = darling::Error::accumulator();
    let args = parse::parse_args(args, &mut errors);
    let (stripped, marked) = parse::take_routes(item_impl, &mut errors);
    let model = check::validate(args, stripped, marked, &mut errors);
    finish("service", errors, model, codegen::emit, || parse::strip_route_attributes(item))
}
