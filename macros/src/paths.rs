//! The one table of runtime paths: every `::marty::__private::...` an expansion names is built here,
//! under the crate path the user chose with `crate = ".."` (for a renamed dependency).

use proc_macro2::TokenStream;
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
}
