//! Stage 3: the `Routes` impl. Each handler is a closure holding an `Arc` of the service, so axum
//! needs no state type and the methods keep their `&self` signatures.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::{HttpMethod, Requirement, Route, ServiceModel};
use crate::common::config_file::embedded_text;
use crate::common::paths::{respan, rt, Paths};

pub(super) fn emit(model: &ServiceModel) -> TokenStream {
    let paths = Paths::new(model.krate.as_ref());
    let item = &model.item;
    let self_ty = &item.self_ty;
    let name = &model.name;
    let config_path = model.config_path.display().to_string();
    let embedded = embedded_text(&paths.core(), &config_path);
    let (routes_trait, arc, router) = (paths.get(rt::ROUTES), paths.get(rt::ARC), paths.get(rt::ROUTER));

    let service = format_ident!("__marty_service", span = Span::mixed_site());
    let local_router = format_ident!("__marty_router", span = Span::mixed_site());
    let grpc = emit_grpc(model, &paths);
    let probes = emit_probes(model, &paths);
    let handlers = super::event_handler::emit(&model.handlers, name, &paths);
    let access = emit_access(model, &paths);
    let description = emit_description(model, &paths);
    // axum merges the method routers of one path, so each route is added on its own.
    let routes = model.routes.iter().map(|route| {
        let path = &route.path;
        let cfgs = &route.cfgs;
        let method_router = emit_handler(route, &paths, &service);
        quote! {
            #(#cfgs)*
            let #local_router = #local_router.route(#path, #method_router);
        }
    });
    quote! {
        #item

        const _: () = {
            #[automatically_derived]
            impl #routes_trait for #self_ty {
                const NAME: &'static str = #name;
                const CONFIG: (&'static str, &'static str) = (#config_path, #embedded);
                #access
                #description

                fn routes(self: #arc<Self>) -> #router {
                    let #local_router = #router::new();
                    #(#routes)*
                    #local_router
                }

                #probes

                #handlers

                #grpc
            }
        };
    }
}

fn emit_handler(route: &Route, paths: &Paths, service: &syn::Ident) -> TokenStream {
    let method = match route.method {
        HttpMethod::Get => quote!(get),
        HttpMethod::Post => quote!(post),
        HttpMethod::Put => quote!(put),
        HttpMethod::Patch => quote!(patch),
        HttpMethod::Delete => quote!(delete),
    };
    let (routing, arc) = (paths.get(rt::ROUTING), paths.get(rt::ARC));
    let handler = &route.handler;
    let args: Vec<syn::Ident> =
        (0..route.extractors.len()).map(|i| format_ident!("__marty_arg{}", i, span = Span::mixed_site())).collect();
    let types = &route.extractors;
    let call = quote!(#service.#handler(#(#args),*).await);
    // The output goes to axum through `handler_output`, at the return type's span: a type axum cannot
    // answer with is reported there, in words, and only there.
    let body = match &route.output {
        Some(output) => {
            let span = output.span();
            let returned = format_ident!("__marty_returned", span = span);
            let handler_output = paths.get(rt::HANDLER_OUTPUT);
            let handler_output = respan(quote!(#handler_output(#returned)), span);
            quote!(let #returned = #call; #handler_output)
        }
        None => call,
    };
    quote! {
        #routing::#method({
            let #service = #arc::clone(&self);
            move |#(#args: #types),*| async move { #body }
        })
    }
}

/// `const ACCESS`: what the routes with `#[public]`, `#[authorize]` or `#[audit]` require of their
/// caller and whether they are audited; and
/// `const ROUTE_NAMES`, every route, for the startup check of `[rate_limit.routes]`.
fn emit_access(model: &ServiceModel, paths: &Paths) -> TokenStream {
    let (route_access, requirement) = (paths.get(rt::ROUTE_ACCESS), paths.get(rt::REQUIREMENT));
    let entries: Vec<TokenStream> = model
        .routes
        .iter()
        .filter_map(|route| {
            let required = match &route.requirement {
                Requirement::Default if !route.audit => return None,
                Requirement::Default => quote!(#requirement::Default),
                Requirement::Public => quote!(#requirement::Public),
                Requirement::Authorize { roles, scopes } => {
                    quote!(#requirement::Authorize { roles: &[#(#roles),*], scopes: &[#(#scopes),*] })
                }
            };
            let (method, path) = (route.method.as_str().to_uppercase(), &route.path);
            let audit = route.audit;
            Some(quote!(#route_access { method: #method, path: #path, requirement: #required, audit: #audit }))
        })
        .collect();
    let option = paths.get(rt::OPTION);
    let names = model.routes.iter().map(|route| format!("{} {}", route.method.as_str().to_uppercase(), route.path));
    let route_names = quote!(const ROUTE_NAMES: #option<&'static [&'static str]> = #option::Some(&[#(#names),*]););
    if entries.is_empty() {
        return route_names;
    }
    quote! {
        const ACCESS: &'static [#route_access] = &[#(#entries),*];
        #route_names
    }
}

/// With `[openapi]`: `fn describe(..)`, each route's operation from its arguments' and answer's
/// types, each bound checked at the type's span (what to derive is reported there).
fn emit_description(model: &ServiceModel, paths: &Paths) -> TokenStream {
    if !model.described {
        return TokenStream::new();
    }
    let (operation_type, operations_type) = (paths.get(rt::OPERATION), paths.get(rt::OPERATIONS));
    let (describe_argument, describe_response) = (paths.get(rt::DESCRIBE_ARGUMENT), paths.get(rt::DESCRIBE_RESPONSE));
    let operations = format_ident!("__marty_operations", span = Span::mixed_site());
    let operation = format_ident!("__marty_operation", span = Span::mixed_site());
    let each = model.routes.iter().map(|route| {
        let (method, path, docs, cfgs) = (route.method.as_str().to_uppercase(), &route.path, &route.docs, &route.cfgs);
        let id = route.handler.to_string();
        let described = match route.undescribed {
            true => quote!(#operation.free_form();),
            false => {
                let arguments = route
                    .extractors
                    .iter()
                    .map(|ty| quote_spanned!(ty.span()=> <#ty as #describe_argument>::describe(&mut #operation);));
                let answer = match &route.output {
                    Some(ty) => quote_spanned!(ty.span()=> <#ty as #describe_response>::describe(&mut #operation);),
                    None => quote!(<() as #describe_response>::describe(&mut #operation);),
                };
                quote!(#(#arguments)* #answer)
            }
        };
        quote! {
            #(#cfgs)*
            {
                let mut #operation = #operation_type::new(#method, #path, #id, #docs);
                #described
                #operations.push(#operation);
            }
        }
    });
    quote! {
        const DESCRIBED: bool = true;
        const VERSION: &'static str = ::core::env!("CARGO_PKG_VERSION");

        fn describe(#operations: &mut #operations_type) {
            #(#each)*
        }
    }
}

/// `fn grpc(..)`: each named tonic server over the shared state, and reflection's descriptors.
fn emit_grpc(model: &ServiceModel, paths: &Paths) -> TokenStream {
    if model.grpc.is_empty() {
        return TokenStream::new();
    }
    let (arc, option, grpc_services) = (paths.get(rt::ARC), paths.get(rt::OPTION), paths.get(rt::GRPC_SERVICES));
    let services = format_ident!("__marty_grpc", span = Span::mixed_site());
    let servers = model.grpc.iter().map(|server| {
        // At the path's span: a state that does not implement the server's trait is reported there.
        quote_spanned!(server.span()=> let #services = #services.add_service(#server::from_arc(#arc::clone(&self)));)
    });
    let reflection =
        model.reflection.as_ref().map(|descriptors| quote!(let #services = #services.reflection(#descriptors);));
    quote! {
        fn grpc(self: #arc<Self>) -> #option<#grpc_services> {
            let #services = #grpc_services::new();
            #(#servers)*
            #reflection
            #option::Some(#services)
        }
    }
}

/// `fn health_checks(..)`: one probe per `#[health_check]` method, named after it.
fn emit_probes(model: &ServiceModel, paths: &Paths) -> TokenStream {
    if model.probes.is_empty() {
        return TokenStream::new();
    }
    let (arc, vec, health_check) = (paths.get(rt::ARC), paths.get(rt::VEC), paths.get(rt::HEALTH_CHECK));
    let checks = format_ident!("__marty_checks", span = Span::mixed_site());
    let service = format_ident!("__marty_service", span = Span::mixed_site());
    let probes = model.probes.iter().map(|(method, cfgs)| {
        let name = method.to_string();
        quote! {
            #(#cfgs)*
            #checks.push(#health_check::new(#name, {
                let #service = #arc::clone(&self);
                move || {
                    let #service = #arc::clone(&#service);
                    async move { #service.#method().await }
                }
            }));
        }
    });
    quote! {
        fn health_checks(self: #arc<Self>) -> #vec<#health_check> {
            let mut #checks = #vec::new();
            #(#probes)*
            #checks
        }
    }
}
