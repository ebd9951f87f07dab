//! The one table of runtime paths: every `::marty::__private::...` an expansion names is built here,
//! under the crate path the user chose with `crate = ".."` (for a renamed dependency).

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::quote;

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

    pub(crate) fn core(&self) -> TokenStream {
        let private = &self.private;
        quote!(#private::core)
    }

    pub(crate) fn private_item(&self, name: &str) -> TokenStream {
        let private = &self.private;
        let ident = syn::Ident::new(name, proc_macro2::Span::call_site());
        quote!(#private::#ident)
    }

    /// The same path with every token at `span`, so a failed bound on it is reported at the user's
    /// token (e.g. the return type) instead of at the attribute.
    pub(crate) fn private_item_at(&self, name: &str, span: Span) -> TokenStream {
        respan(self.private_item(name), span)
    }
}

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
