//! The store's services describe their routes (`[openapi]` in store.toml) as a client generator
//! and schemathesis read them: from the running processes, without a token.

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use support::store::{Databases, Stack};

fn description(addr: std::net::SocketAddr) -> serde_json::Value {
    let response = support::request_with(addr, "GET", "/openapi.json", None, &[]).expect("GET /openapi.json");
    assert_eq!(response.status, 200, "open like the probes: {response:?}");
    assert_eq!(response.header("content-type"), Some("application/json"));
    serde_json::from_str(&response.body).expect("the description is JSON")
}

/// Every `$ref` in `value`, for the check that each names a component that exists.
fn references(value: &serde_json::Value, found: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value.as_str()) {
                    ("$ref", Some(reference)) => {
                        found.insert(reference.to_owned());
                    }
                    _ => references(value, found),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| references(item, found)),
        _ => {}
    }
}

#[test]
fn each_service_describes_its_routes_bodies_callers_and_errors() {
    let stack = Stack::new(Databases::sqlite("store-openapi"), &[]);
    let _inventory = stack.start("inventory");
    let _orders = stack.start("orders");

    let orders = description(stack.orders);
    assert_eq!(orders["openapi"], "3.1.0");
    assert_eq!(orders["info"]["version"], env!("CARGO_PKG_VERSION"), "the crate's version");
    let operations: BTreeSet<String> = orders["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, methods)| methods.as_object().unwrap().keys().map(move |method| format!("{method} {path}")))
        .collect();
    let expected = [
        "get /orders/parked",
        "get /orders/{id}",
        "get /orders/{id}/history",
        "get /orders/{id}/outcome",
        "post /orders",
        "post /orders/{id}/resume",
    ];
    assert_eq!(operations, expected.into_iter().map(String::from).collect(), "every route, nothing else");

    let place = &orders["paths"]["/orders"]["post"];
    assert_eq!(place["operationId"], "place");
    assert!(place["summary"].as_str().unwrap().starts_with("Places an order"), "the doc comment: {place}");
    let body = &place["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(body["required"], serde_json::json!(["item", "quantity", "amount_cents"]), "NewOrder's schema: {body}");
    assert_eq!(body["properties"]["quantity"]["minimum"], 1, "the constraints the handler enforces: {body}");
    assert_eq!(
        place["security"],
        serde_json::json!([{ "bearer": ["customer"] }]),
        "`#[authorize(roles = [\"customer\"])]`"
    );
    let statuses: Vec<&str> = place["responses"].as_object().unwrap().keys().map(String::as_str).collect();
    for status in ["2XX", "400", "401", "403", "404", "409", "413", "415", "422", "500", "503", "504"] {
        assert!(statuses.contains(&status), "`POST /orders` lists {status}: {statuses:?}");
    }
    assert_eq!(
        place["responses"]["422"]["content"]["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
    let order = &orders["paths"]["/orders/{id}"]["get"];
    assert_eq!(order["parameters"][0]["name"], "id");
    assert_eq!(order["parameters"][0]["in"], "path");
    let roles = serde_json::json!([{ "bearer": ["customer"] }, { "bearer": ["operator"] }]);
    assert_eq!(order["security"], roles, "any of the roles: alternatives");
    assert_eq!(order["responses"]["200"]["content"]["application/json"]["schema"]["required"][0], "id");
    assert_eq!(orders["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");

    let inventory = description(stack.inventory);
    let stock = &inventory["paths"]["/stock/{item}"]["get"];
    assert_eq!(stock["security"], serde_json::json!([{}]), "`#[public]`: no credentials");
    assert!(stock["responses"].get("401").is_none(), "a public route never answers 401: {stock}");
    assert_eq!(stock["responses"]["200"]["content"]["application/json"]["schema"]["type"], "integer");

    for document in [&orders, &inventory] {
        let mut found = BTreeSet::new();
        references(document, &mut found);
        for reference in found {
            let name = reference.strip_prefix("#/components/schemas/").expect("a schema reference");
            assert!(document["components"]["schemas"].get(name).is_some(), "{reference} resolves");
        }
    }
}

/// schemathesis (from PyPI) generates requests from the orders service's description, valid and
/// not, with and without a token, and checks every answer against it: no 5xx, every status,
/// content type, header and body as described, invalid data refused, valid data accepted.
#[test]
#[ignore = "needs MARTY_TEST_SCHEMATHESIS (pip install schemathesis)"]
fn schemathesis_finds_nothing_wrong_with_the_orders_service() {
    let schemathesis = marty_tests::server_env("MARTY_TEST_SCHEMATHESIS");
    let stack = Stack::new(Databases::sqlite("store-schemathesis"), &[]);
    let _inventory = stack.start("inventory");
    let _payments = stack.start("payments");
    let _orders = stack.start("orders");
    let authorization = format!("Authorization: {}", stack.authorization("load"));
    // Its working files (reports, an examples database) go to a directory of the test's, not the repository.
    let work = std::env::temp_dir().join(format!("marty-schemathesis-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let output = Command::new(schemathesis)
        .current_dir(&work)
        .args(["run", &format!("http://{}/openapi.json", stack.orders)])
        .args(["--checks", "all", "--max-examples", "100", "--seed", "1", "--no-color", "--workers", "2"])
        .args(["--header", &authorization, "--generation-database", "none"])
        .output()
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `MARTY_OPENAPI_OUT` (what `cargo marty openapi` sets): the service writes its description and
/// exits once its configuration is loaded, before it opens a database or a port.
#[test]
fn a_service_asked_for_its_description_writes_it_without_its_database() {
    let out = std::env::temp_dir().join(format!("marty-orders-openapi-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let output = Command::new(support::store::BINARY)
        .arg("orders")
        .env_remove("MARTY_CONFIG")
        .env("MARTY__DEPENDENCIES__ORDERS_DB__URL", "postgres://nobody@127.0.0.1:9/nothing")
        .env("STORE_CLIENT_SECRET", "unused")
        .env(marty::openapi::OUT_VARIABLE, &out)
        .output()
        .expect("run the orders service");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let description: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert!(description["paths"]["/orders"]["post"].is_object(), "{description}");
}
