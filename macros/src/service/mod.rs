//! `#[service]` on the `impl` block of a service's state: parse (the attribute's arguments and each
//! method's route attribute) -> check (route syntax, duplicates, receivers, `marty.toml`) -> codegen
//! (the `marty::service::Routes` impl). Other attributes on the methods, `#[database_call]` included,
//! are left in place and expand as usual.

mod check;
mod codegen;
mod events;
mod parse;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use proc_macro2::TokenStream;
use quote::quote;

use crate::diagnostic::error;

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
    pub(crate) handlers: Vec<events::Handler>,
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
    let item_impl: syn::ItemImpl = match syn::parse2(item.clone()) {
        Ok(item_impl) => item_impl,
        Err(_) => {
            let span = item.clone().into_iter().next().map_or_else(proc_macro2::Span::call_site, |token| token.span());
            let help = "put it on the state's impl block: `#[marty::service] impl Orders { #[get(\"/orders/{id}\")] async fn get_order(&self, ..) -> .. }`";
            return with_errors(error(span, "`#[service]` goes on an `impl` block", help), item);
        }
    };
    let mut errors = darling::Error::accumulator();
    let args = parse::parse_args(args, &mut errors);
    let (stripped, marked) = parse::take_routes(item_impl, &mut errors);
    let model = check::validate(args, stripped, marked, &mut errors);
    let output = match (errors.finish(), model) {
        (Ok(()), Some(model)) => codegen::emit(&model),
        (Err(found), _) => with_errors(found, parse::strip_route_attributes(item)),
        // No model and nothing to say: the configuration's errors were reported at an earlier call
        // site of this compilation (the build fails there); leave the item as written.
        (Ok(()), None) => parse::strip_route_attributes(item),
    };
    if std::env::var_os("MARTY_MACROS_DEBUG").is_some() {
        eprintln!("#[service] expands to:\n{output}");
    }
    output
}

fn with_errors(errors: darling::Error, item: TokenStream) -> TokenStream {
    let errors = errors.write_errors();
    quote!(#errors #item)
}
