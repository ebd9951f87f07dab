use proc_macro::TokenStream;
#[proc_macro_attribute]
pub fn database_call(_a: TokenStream, i: TokenStream) -> TokenStream {
    i
}
#[proc_macro_attribute]
pub fn api_call(_a: TokenStream, i: TokenStream) -> TokenStream {
    i
}
#[proc_macro_attribute]
pub fn cache_call(_a: TokenStream, i: TokenStream) -> TokenStream {
    i
}
