//! The one table of runtime paths. Every `marty::__private::...` item an expansion names is a
//! constant of [`rt`], built under the crate path the user chose with `crate = ".."` (for a renamed
//! dependency): a misspelt item is a compile error here, not in a user's build, and a test checks
//! that each one is exported by `runtime/src/private.rs`, the contract between the two crates.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::quote;

/// A runtime item: its path segments under `marty::__private`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Item(&'static [&'static str]);

macro_rules! runtime_items {
    ($($(#[$doc:meta])* $name:ident = $($segment:ident)::+;)*) => {
        /// The runtime items expansions name, by attribute.
        pub(crate) mod rt {
            use super::Item;
            $($(#[$doc])* pub(crate) const $name: Item = Item(&[$(stringify!($segment)),+]);)*
            /// Every item, for the test that they exist.
            #[cfg(test)]
            pub(crate) const ALL: &[Item] = &[$($name),*];
        }
    };
}

runtime_items! {
    /// `core`, for `Option`, `Result`, `Duration`, `include_str!`: immune to a user's shadowing names.
    CORE = core;
    STRING = String;
    // #[database_call], #[api_call], #[cache_call]
    CALL_SITE = CallSite;
    DEPENDENCY_KIND = DependencyKind;
    RETRY_OVERRIDE = RetryOverride;
    BACKOFF = Backoff;
    ERROR_CONVERTER = error_converter;
    CLASSIFIER = classifier;
    ATTEMPT_FUTURE = attempt_future;
    CALL_RETURN = call_return;
    // #[derive(Event)]
    EVENT = Event;
    EVENT_KEY = event_key;
    // #[service]: routes, probes and gRPC
    ARC = service_support::Arc;
    VEC = service_support::Vec;
    OPTION = service_support::Option;
    ROUTES = service_support::Routes;
    ROUTER = service_support::Router;
    ROUTING = service_support::routing;
    HANDLER_OUTPUT = service_support::handler_output;
    HEALTH_CHECK = service_support::HealthCheck;
    GRPC_SERVICES = service_support::GrpcServices;
    ROUTE_ACCESS = service_support::RouteAccess;
    REQUIREMENT = service_support::Requirement;
    // #[service] with [openapi]
    OPERATION = openapi_support::Operation;
    OPERATIONS = openapi_support::Operations;
    DESCRIBE_ARGUMENT = openapi_support::DescribeArgument;
    DESCRIBE_RESPONSE = openapi_support::DescribeResponse;
    // #[event_handler]
    BOX = service_support::Box;
    RESULT = service_support::Result;
    DURATION = service_support::Duration;
    PANIC = service_support::panic;
    EVENT_HANDLER = service_support::EventHandler;
    HANDLED = service_support::Handled;
    HANDLER_OPTIONS = service_support::HandlerOptions;
    MESSAGE = service_support::Message;
    ASSERT_EVENT = service_support::assert_event;
    SAME_TOPIC = service_support::same_topic;
    HANDLER_RESULT = service_support::handler_result;
    DECODE_EVENT = service_support::decode_event;
    INBOX_BEGIN = service_support::inbox_begin;
    INBOX_COMMIT = service_support::inbox_commit;
    // #[saga]
    SAGA = saga_support::Saga;
    SAGA_DEFINITION = saga_support::SagaDefinition;
    STEP_DEFINITION = saga_support::StepDefinition;
    STEP_CONTEXT = saga_support::StepContext;
    STEP_ERROR = saga_support::StepError;
    STEP_RESULT = saga_support::step_result;
    NO_SUCH_STEP = saga_support::no_such_step;
    SAGA_BOX = saga_support::Box;
    SAGA_RESULT = saga_support::Result;
    BOX_FUTURE = saga_support::BoxFuture;
}

/// Where the runtime is: `::marty`, or the path given with `crate = ".."`.
pub(crate) struct Paths {
    private: TokenStream,
}

impl Paths {
    pub(crate) fn new(krate: Option<&syn::Path>) -> Self {
        let root = match krate {
            Some(path) => quote!(#path),
            None => quote!(::marty),
        };
        Paths { private: quote!(#root::__private) }
    }

    /// The item's full path.
    pub(crate) fn get(&self, item: Item) -> TokenStream {
        let private = &self.private;
        let segments = item.0.iter().map(|segment| syn::Ident::new(segment, Span::call_site()));
        quote!(#private #(::#segments)*)
    }

    /// The same path with every token at `span`, so a failed bound on it is reported at the user's
    /// token (e.g. the return type) instead of at the attribute.
    pub(crate) fn get_at(&self, item: Item, span: Span) -> TokenStream {
        respan(self.get(item), span)
    }

    pub(crate) fn core(&self) -> TokenStream {
        self.get(rt::CORE)
    }
}

/// Every token of `tokens` at `span`.
pub(crate) fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut respanned = Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                token = TokenTree::Group(respanned);
            }
            token.set_span(span);
            token
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::rt;

    /// Each item's last segment is exported in its module of `runtime/src/private.rs` (a `pub` item
    /// or re-export by that name): the table and the runtime's contract agree.
    #[test]
    fn every_runtime_item_is_exported_by_the_runtime() {
        let private = include_str!("../../../runtime/src/private.rs");
        for item in rt::ALL {
            let (name, module) = item.0.split_last().expect("an item has a name");
            let scope = match module.first() {
                Some(module) => {
                    let start = private.find(&format!("pub mod {module} {{")).expect("the module exists");
                    let end = private[start..].find("\n}\n").map_or(private.len(), |end| start + end);
                    &private[start..end]
                }
                None => private,
            };
            let exported = scope.lines().any(|line| {
                let line = line.trim_start();
                line.starts_with("pub ")
                    && line.split(|c: char| !(c.is_alphanumeric() || c == '_')).any(|word| word == *name)
            });
            assert!(exported, "`{}` is not exported by runtime/src/private.rs", item.0.join("::"));
        }
    }
}
