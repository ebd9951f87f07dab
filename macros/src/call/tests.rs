//! Expansion snapshots: what each argument turns into, pretty-printed. Paths under the crate are
//! written as `$MANIFEST_DIR` (before formatting) so the snapshots do not depend on where the
//! repository is checked out.

use marty_config::DependencyKind;
use quote::quote;

fn expand(kind: DependencyKind, args: proc_macro2::TokenStream, item: proc_macro2::TokenStream) -> String {
    crate::common::pretty(super::expand(kind, args, item))
}

#[test]
fn a_method_with_the_dependency_defaults() {
    insta::assert_snapshot!(expand(
        DependencyKind::Database,
        quote!(dependency = "orders_db", config = "tests/marty.toml"),
        quote! {
            /// Loads one order.
            pub async fn load(&self, id: i64) -> Result<Order, AppError> {
                let order = self.find(id).await?;
                Ok(order)
            }
        },
    ));
}

#[test]
fn every_override_on_a_free_fn() {
    insta::assert_snapshot!(expand(
        DependencyKind::Api,
        quote!(
            dependency = "payments_api",
            operation = "charge_card",
            timeout = "1500ms",
            retry(max_attempts = 5, backoff = "fixed", initial = "10ms", max = "1s", jitter = false),
            fallback = charge_later,
            classify = classify_payment_error,
            config = "tests/marty.toml",
            crate = "my_marty"
        ),
        quote! {
            async fn charge(amount: u64) -> PaymentResult<Receipt> {
                gateway::charge(amount).await
            }
        },
    ));
}

#[test]
fn retry_off_makes_one_attempt_without_a_loop() {
    insta::assert_snapshot!(expand(
        DependencyKind::Database,
        quote!(dependency = "orders_db", retry = false, config = "tests/marty.toml"),
        quote! {
            async fn insert(order: Order) -> Result<(), AppError> {
                save(order).await
            }
        },
    ));
}

#[test]
fn an_error_keeps_the_users_fn_beside_it() {
    insta::assert_snapshot!(expand(
        DependencyKind::Database,
        quote!(dependency = "orders_dbb", config = "tests/marty.toml"),
        quote! {
            async fn load() -> Result<u32, AppError> {
                Ok(1)
            }
        },
    ));
}

/// `database_call`'s documentation shows its expansion: this keeps the text the real one.
#[test]
fn the_documented_expansion_is_the_real_one() {
    let docs = include_str!("../lib.rs");
    let section = &docs[docs.find("/// # Expands to").expect("the section")..];
    let block = &section[section.find("/// ```text\n").expect("its code block") + "/// ```text\n".len()..];
    let documented: String = block[..block.find("/// ```\n").expect("the block's end")]
        .lines()
        .map(|line| format!("{}\n", line.strip_prefix("/// ").unwrap_or(line.trim_start_matches("///"))))
        .collect();
    let real = expand(
        DependencyKind::Database,
        quote!(dependency = "orders_db"),
        quote! {
            async fn load(&self, id: i64) -> Result<Order, AppError> {
                self.find(id).await
            }
        },
    );
    assert_eq!(documented, real, "write this expansion into `database_call`'s docs:\n{real}");
}
