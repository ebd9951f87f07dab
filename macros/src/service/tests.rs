//! Expansion snapshot of `#[service]`.

use quote::quote;

#[test]
fn routes_become_closures_over_the_shared_service() {
    let output = super::expand(
        quote!(name = "orders", config = "tests/marty.toml"),
        quote! {
            impl Orders {
                #[get("/orders/{id}")]
                async fn get_order(&self, Path(id): Path<u64>) -> Json<Order> {
                    Json(self.find(id).await)
                }

                #[cfg(feature = "admin")]
                #[marty::delete("/orders/{id}")]
                async fn remove(&self, Path(id): Path<u64>) {}

                async fn find(&self, id: u64) -> Order {
                    Order { id }
                }
            }
        },
    );
    insta::assert_snapshot!(crate::common::pretty(output));
}
