//! The store's three services in one test process with `marty::testing`: each in a runtime of its
//! own (its own dependencies, metrics and broker, as if it were its own process), found by the
//! others at their test ports, with an in-process development issuer. What the kit offers a test:
//! a client, the events a service published, and control of its dependencies.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use marty::security::DevIssuer;
use marty::service::Routes;
use marty::testing::{TestService, TestServiceBuilder};
use marty_examples::store::inventory::Inventory;
use marty_examples::store::orders::Orders;
use marty_examples::store::payments::Payments;
use marty_examples::store::OrderConfirmed;
use support::store::Databases;

const SECRET: &str = "test-only-secret";

struct Store {
    orders: TestService,
    inventory: TestService,
    _payments: TestService,
    issuer: DevIssuer,
}

/// A service of the store, set to find the development issuer at `issuer`, as the `MARTY__`
/// variables of a deployment would say it.
fn with_issuer<S: Routes>(issuer: SocketAddr) -> TestServiceBuilder<S> {
    TestService::builder::<S>()
        .env("MARTY__SECURITY__JWT__JWKS_URL", format!("http://{issuer}/jwks.json"))
        .env("MARTY__SECURITY__CLIENTS__STORE__TOKEN_URL", format!("http://{issuer}/token"))
        .env("STORE_CLIENT_SECRET", SECRET)
}

async fn store(test: &str) -> Store {
    let issuer = DevIssuer::new("store-dev-issuer", "store").client("orders", SECRET, &[], &[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer_addr = issuer.serve(listener).await.unwrap();
    let databases = Databases::sqlite(test);
    let inventory = with_issuer::<Inventory>(issuer_addr)
        .env("MARTY__DEPENDENCIES__INVENTORY_DB__URL", databases.url("inventory"))
        .start_with(|registry| async move { Inventory::open(&registry).await })
        .await;
    let payments = with_issuer::<Payments>(issuer_addr)
        .env("MARTY__DEPENDENCIES__PAYMENTS_DB__URL", databases.url("payments"))
        .start_with(|registry| async move { Payments::open(&registry).await })
        .await;
    let orders = with_issuer::<Orders>(issuer_addr)
        .env("MARTY__DEPENDENCIES__ORDERS_DB__URL", databases.url("orders"))
        .env("MARTY__DEPENDENCIES__INVENTORY_API__URL", format!("http://{}", inventory.addr()))
        .env("MARTY__DEPENDENCIES__PAYMENTS_API__URL", format!("http://{}", payments.addr()))
        .start_with(|registry| async move { Orders::open(&registry, None, None).await })
        .await;
    Store { orders, inventory, _payments: payments, issuer }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_placed_in_process_completes_and_is_announced() {
    let store = store("kit-order").await;
    let customer = store.issuer.token("alice", &["customer"], &[]);
    let order = serde_json::json!({"item": "book", "quantity": 2, "amount_cents": 1500});

    let anonymous = store.orders.client().post("/orders").json(&order).send().await;
    assert_eq!(anonymous.status(), 401, "{}", anonymous.text());
    let placed = store.orders.client().post("/orders").bearer(&customer).json(&order).send().await;
    assert_eq!(placed.status(), 202, "{}", placed.text());
    let id = placed.json::<serde_json::Value>()["id"].as_str().unwrap().to_owned();

    let confirmed = store
        .orders
        .expect_event::<OrderConfirmed>({
            let id = id.clone();
            move |event| event.order_id == id
        })
        .within(Duration::from_secs(30))
        .await;
    assert_eq!((confirmed.item.as_str(), confirmed.quantity, confirmed.amount_cents), ("book", 2, 1500));
    let outcome = store.orders.client().get(&format!("/orders/{id}/outcome")).bearer(&customer).send().await;
    assert_eq!(outcome.json::<serde_json::Value>()["status"], "completed", "{}", outcome.text());

    // Each service counted its own calls: the runtimes share no registry.
    let inventory_metrics = store.inventory.metrics();
    assert!(
        inventory_metrics
            .contains(r#"marty_calls_total{dependency="inventory_db",operation="reserve",outcome="success"} 1"#),
        "{inventory_metrics}"
    );
    let orders_metrics = store.orders.metrics();
    assert!(
        orders_metrics.contains(r#"dependency="inventory_api",operation="reserve",outcome="success"} 1"#),
        "{orders_metrics}"
    );
    assert!(!orders_metrics.contains(r#"marty_calls_total{dependency="inventory_db""#), "{orders_metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_controlled_by_the_test_answers_as_it_would_in_production() {
    let store = store("kit-control").await;
    let stock = store.inventory.client().get("/stock/book").send().await;
    assert_eq!(stock.status(), 200, "{}", stock.text());

    // Every permit of the database's bulkhead taken: a call waits `max_wait`, then is shed.
    let full = store.inventory.dependency("inventory_db").fill_bulkhead();
    let shed = store.inventory.client().get("/stock/book").send().await;
    assert_eq!(shed.status(), 503, "{}", shed.text());
    assert_eq!(shed.header("content-type"), Some("application/problem+json"));
    assert!(shed.header("retry-after").is_some(), "{:?}", shed.headers());
    drop(full);
    assert_eq!(store.inventory.client().get("/stock/book").send().await.status(), 200);

    // An open breaker turns calls away at once; closed again, calls go through.
    store.inventory.dependency("inventory_db").open_breaker();
    assert_eq!(store.inventory.client().get("/stock/book").send().await.status(), 503);
    store.inventory.dependency("inventory_db").close_breaker();
    assert_eq!(store.inventory.client().get("/stock/book").send().await.status(), 200);

    // Injected errors fail every attempt; healed, the dependency answers again.
    store.inventory.dependency("inventory_db").fail(1.0);
    assert_eq!(store.inventory.client().get("/stock/book").send().await.status(), 503);
    assert!(store
        .inventory
        .metrics()
        .contains(r#"marty_faults_injected_total{dependency="inventory_db",fault="error"}"#));
    store.inventory.dependency("inventory_db").heal();
    assert_eq!(store.inventory.client().get("/stock/book").send().await.status(), 200);
    // The other service's dependency of the same name was never touched.
    assert_eq!(
        store.orders.registry().dependency("inventory_db").unwrap().circuit_breaker().state().to_string(),
        "closed"
    );
}

/// `[openapi] ui` (feature `openapi-ui`): the page is served as HTML with its own content security
/// policy (the API's `default-src 'none'` would stop Scalar's script), pointed at the description.
/// Not checked: that Scalar's script, from its CDN, renders it in a browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_has_a_browsable_page_when_asked() {
    let databases = Databases::sqlite("kit-docs");
    let inventory = with_issuer::<Inventory>("127.0.0.1:9".parse().unwrap())
        .env("MARTY__DEPENDENCIES__INVENTORY_DB__URL", databases.url("inventory"))
        .env("MARTY__OPENAPI__UI", "/docs")
        .start_with(|registry| async move { Inventory::open(&registry).await })
        .await;
    let page = inventory.client().get("/docs").send().await;
    assert_eq!(page.status(), 200, "{}", page.text());
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let policy = page.header("content-security-policy").unwrap_or_default();
    assert!(policy.contains("script-src 'self' https://cdn.jsdelivr.net"), "{policy}");
    assert!(page.text().contains(r#"data-url="/openapi.json""#), "{}", page.text());
    assert!(page.text().contains(r#"<script src="https://cdn.jsdelivr.net/npm/@scalar/api-reference">"#));
    let description = inventory.client().get("/openapi.json").send().await;
    assert_eq!(description.json::<serde_json::Value>()["openapi"], "3.1.0");
}
