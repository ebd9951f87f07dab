//! Expansion snapshot of `#[saga]`.

use quote::quote;

#[test]
fn steps_become_match_arms_over_a_static_definition() {
    let output = super::expand(
        quote!(store = "orders_db", env = Clients, timeout = "30s", config = "tests/marty.toml"),
        quote! {
            impl PlaceOrder {
                #[saga_step(compensate = release_stock, timeout = "5s")]
                async fn reserve_stock(&mut self, ctx: &mut StepContext<Clients>) -> Result<(), StepError> {
                    Ok(())
                }

                async fn release_stock(&mut self) -> Result<(), StepError> {
                    Ok(())
                }

                #[marty::saga_step(max_attempts = 1)]
                async fn confirm(&self) -> Result<(), StepError> {
                    Ok(())
                }
            }
        },
    );
    insta::assert_snapshot!(crate::common::pretty(output));
}
