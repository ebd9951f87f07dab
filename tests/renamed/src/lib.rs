//! `crate = ".."` on every attribute, for a crate that depends on Marty under another name: no `::marty` path may be
//! emitted. A local `marty` module stands where a careless expansion would look.
#![deny(warnings)]

#[allow(dead_code)]
mod marty {}

#[derive(Debug)]
struct AppError(renamed_marty::Error);

impl From<renamed_marty::Error> for AppError {
    fn from(error: renamed_marty::Error) -> Self {
        AppError(error)
    }
}

impl renamed_marty::Classify for AppError {
    fn classify(&self) -> renamed_marty::ErrorClass {
        self.0.classify()
    }
}

#[allow(dead_code)]
#[renamed_marty::database_call(dependency = "orders_db", crate = "renamed_marty")]
async fn load(id: u32) -> Result<u32, AppError> {
    Ok(id)
}

#[allow(dead_code)]
#[renamed_marty::cache_call(dependency = "sessions", crate = renamed_marty)]
async fn session() -> Result<u32, AppError> {
    Ok(1)
}

#[cfg(test)]
#[tokio::test]
async fn calls_expand_against_the_renamed_crate() {
    assert_eq!(load(3).await.unwrap(), 3);
    assert_eq!(session().await.unwrap(), 1);
}

// Every other attribute, with the same renamed crate.

#[derive(serde::Serialize, serde::Deserialize, renamed_marty::Event)]
#[event(topic = "orders.placed", crate = "renamed_marty")]
struct OrderPlaced {
    #[event(key)]
    order_id: u64,
}

#[allow(dead_code)]
struct Orders;

#[allow(dead_code)]
#[renamed_marty::service(name = "orders", crate = "renamed_marty")]
impl Orders {
    #[get("/orders")]
    async fn list(&self) -> &'static str {
        "[]"
    }

    #[health_check]
    async fn database(&self) -> Result<(), String> {
        Ok(())
    }

    #[event_handler(topic = "orders.placed")]
    async fn on_placed(&self, event: OrderPlaced) -> Result<(), String> {
        let _ = event.order_id;
        Ok(())
    }
}

#[allow(dead_code)]
#[derive(serde::Serialize, serde::Deserialize)]
struct PlaceOrder {
    reserved: bool,
}

#[allow(dead_code)]
#[renamed_marty::saga(store = "orders_db", crate = "renamed_marty")]
impl PlaceOrder {
    #[saga_step(compensate = release)]
    async fn reserve(&mut self) -> Result<(), renamed_marty::saga::StepError> {
        self.reserved = true;
        Ok(())
    }

    async fn release(&mut self) -> Result<(), renamed_marty::saga::StepError> {
        self.reserved = false;
        Ok(())
    }
}

#[cfg(test)]
#[test]
fn every_attribute_expands_against_the_renamed_crate() {
    use renamed_marty::saga::Saga;
    use renamed_marty::service::Routes;
    use renamed_marty::Event;
    use std::sync::Arc;

    let order = OrderPlaced { order_id: 7 };
    assert_eq!((OrderPlaced::TOPIC, order.key().as_deref()), ("orders.placed", Some("7")));
    assert_eq!(Orders::NAME, "orders");
    assert_eq!(Arc::new(Orders).health_checks().len(), 1);
    assert_eq!(Arc::new(Orders).event_handlers().len(), 1);
    let _router = Arc::new(Orders).routes();
    let definition = <PlaceOrder as Saga>::DEFINITION;
    assert_eq!((definition.name, definition.steps.len()), ("place_order", 1));
}
