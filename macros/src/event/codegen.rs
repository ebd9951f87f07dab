//! Stage 3: `impl marty::Event`. Never validates, never fails.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use super::EventModel;
use crate::common::paths::{rt, Paths};

pub(super) fn emit(model: &EventModel) -> TokenStream {
    let paths = Paths::new(model.krate.as_ref());
    let event = paths.get(rt::EVENT);
    let core = paths.core();
    let (ident, topic, version) = (&model.ident, &model.topic, model.version);
    let string = paths.get(rt::STRING);
    let key = match &model.key {
        Some((access, ty)) => {
            // Named at the field type's span: a key that does not print is reported there.
            let event_key = paths.get_at(rt::EVENT_KEY, ty.span());
            let key = quote_spanned!(ty.span()=> #event_key::<#ty>(&self.#access));
            quote!(#core::option::Option::Some(#key))
        }
        None => quote!(#core::option::Option::None),
    };
    quote! {
        const _: () = {
            #[automatically_derived]
            impl #event for #ident {
                const TOPIC: &'static str = #topic;
                const VERSION: u32 = #version;

                fn key(&self) -> #core::option::Option<#string> {
                    #key
                }
            }
        };
    }
}
