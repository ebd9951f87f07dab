#![deny(warnings)]
//! Every argument of `#[derive(Event)]`: structs with a named or positional key, an enum without a
//! key, a version; compiled with warnings denied and run.

use marty::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, marty::Event)]
#[event(topic = "orders.created")]
struct OrderCreated {
    #[event(key)]
    order_id: u64,
    item: String,
}

#[derive(Serialize, Deserialize, marty::Event)]
#[event(topic = "payments.v2.captured", version = 3)]
struct PaymentCaptured(#[event(key)] String, u64);

#[derive(Serialize, Deserialize, marty::Event)]
#[event(topic = "audit_log-entries")]
enum AuditEntry {
    Login { user: String },
    Logout,
}

fn main() {
    let order = OrderCreated { order_id: 9, item: "book".into() };
    assert_eq!((OrderCreated::TOPIC, OrderCreated::VERSION, order.key()), ("orders.created", 1, Some("9".into())));
    assert_eq!(order.item, "book");
    let payment = PaymentCaptured("pay-1".into(), 100);
    assert_eq!((PaymentCaptured::VERSION, payment.key(), payment.1), (3, Some("pay-1".into()), 100));
    assert_eq!(AuditEntry::Logout.key(), None);
    assert!(matches!(AuditEntry::decode(br#"{"Login":{"user":"ada"}}"#), Ok(AuditEntry::Login { .. })));
}
