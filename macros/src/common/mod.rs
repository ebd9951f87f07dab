//! What every attribute family shares, so each rule and message is written once: the argument
//! values and the checker of names and shapes (`args`), error messages in the house style
//! (`diagnostic`), `marty.toml` at compile time and the dependency checks against it
//! (`config_file`), durations (`durations`), and the runtime paths expansions name (`paths`).
//! Families (`call`, `service`, `saga`, `event`) use this module and never each other's.

pub(crate) mod args;
pub(crate) mod config_file;
pub(crate) mod diagnostic;
pub(crate) mod durations;
pub(crate) mod paths;

use proc_macro2::{Span, TokenStream};
use quote::quote;

/// The end of every attribute's expansion. With no errors, the model's code. With errors, the
/// errors beside `item_on_error` (the item as written, minus the family's inner attributes): one
/// mistake must not cascade into "cannot find fn" or "unknown attribute". With neither a model nor
/// an error, the configuration's errors were shown at an earlier attribute of this compilation
/// (once per file, see `config_file`), which fails the build: the item is left as written.
pub(crate) fn finish<M>(
    attribute: &str,
    errors: darling::error::Accumulator,
    model: Option<M>,
    emit: impl FnOnce(&M) -> TokenStream,
    item_on_error: impl FnOnce() -> TokenStream,
) -> TokenStream {
    let output = match (errors.finish(), model) {
        (Ok(()), Some(model)) => emit(&model),
        (Err(found), _) => {
            let found = found.write_errors();
            let item = item_on_error();
            quote!(#found #item)
        }
        (Ok(()), None) => {
            debug_assert!(
                config_file::reported_earlier(),
                "#[{attribute}]: a check returned no model without reporting an error"
            );
            item_on_error()
        }
    };
    if std::env::var_os("MARTY_MACROS_DEBUG").is_some() {
        eprintln!("#[{attribute}] expands to:\n{output}");
    }
    output
}

/// The error for an attribute on the wrong kind of item, at the item's first token, beside the item.
pub(crate) fn wrong_item(item: TokenStream, problem: &str, help: &str) -> TokenStream {
    let span = item.clone().into_iter().next().map_or_else(Span::call_site, |token| token.span());
    let errors = diagnostic::error(span, problem, help).write_errors();
    quote!(#errors #item)
}

/// The item's `#[cfg(..)]` attributes, copied onto what the expansion generates for it.
pub(crate) fn cfg_attributes(attrs: &[syn::Attribute]) -> Vec<syn::Attribute> {
    attrs.iter().filter(|attr| attr.path().is_ident("cfg")).cloned().collect()
}

/// Pretty-prints an expansion with the checkout's path replaced before formatting, so line wrapping
/// (and so the snapshot) does not depend on how long the path is.
#[cfg(test)]
pub(crate) fn pretty(output: proc_macro2::TokenStream) -> String {
    let text = output.to_string().replace(env!("CARGO_MANIFEST_DIR"), "$MANIFEST_DIR");
    let file =
        syn::parse_str::<syn::File>(&text).unwrap_or_else(|error| panic!("expansion is not a file ({error}): {text}"));
    prettyplease::unparse(&file)
}
