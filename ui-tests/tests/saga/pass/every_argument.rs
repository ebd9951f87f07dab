#![deny(warnings)]

use marty::saga::{StepContext, StepError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct PlaceOrder {
    order_id: u64,
}

struct Clients;

#[derive(Debug)]
struct PaymentError;

impl std::fmt::Display for PaymentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("declined")
    }
}

impl marty::Classify for PaymentError {
    fn classify(&self) -> marty::ErrorClass {
        marty::ErrorClass::Expected
    }
}

/// Every argument, `env` given, a step without a context, a compensation taking `&self`.
#[marty::saga(name = "place_order", store = "orders_db", env = Clients, timeout = "30s")]
impl PlaceOrder {
    #[marty::saga_step(compensate = release_stock, timeout = "5s", max_attempts = 3)]
    async fn reserve_stock(&mut self, ctx: &mut StepContext<Clients>) -> Result<(), StepError> {
        let _clients: &Clients = ctx.env();
        self.order_id += 1;
        Ok(())
    }

    async fn release_stock(&self, ctx: &mut StepContext<Clients>) -> Result<(), StepError> {
        let _ = ctx.idempotency_key();
        Ok(())
    }

    #[saga_step(compensate = refund)]
    async fn charge(&mut self) -> Result<(), PaymentError> {
        Ok(())
    }

    async fn refund(&mut self) -> Result<(), PaymentError> {
        Err(PaymentError)
    }

    #[saga_step]
    async fn confirm(&mut self) -> Result<(), StepError> {
        Ok(())
    }
}

/// `env` inferred from the context, `name` from the type.
#[derive(Serialize, Deserialize)]
struct ShipOrder;

#[marty::saga(store = "orders_db")]
impl ShipOrder {
    #[saga_step]
    async fn ship(&mut self, _ctx: &mut StepContext<Clients>) -> Result<(), StepError> {
        Ok(())
    }
}

fn main() {
    use marty::saga::Saga;
    assert_eq!(<PlaceOrder as Saga>::DEFINITION.steps.len(), 3);
    assert_eq!(<PlaceOrder as Saga>::DEFINITION.steps[0].compensation, Some("release_stock"));
    assert_eq!(<ShipOrder as Saga>::DEFINITION.name, "ship_order");
    let _: Option<<ShipOrder as Saga>::Env> = Some(Clients);
}
