//! The dashboard and alerting rules in `deploy/monitoring/`, as an operator loads them: promtool
//! accepts the rules and their unit tests pass (each alert fires on the series that should raise it
//! and not on its healthy neighbours), and every metric a panel or a rule reads is one the store's
//! services really export on `/metrics`, so no panel stays empty because of a misspelt name.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use support::store::{Databases, Stack};

fn monitoring_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring")
}

#[test]
#[ignore = "needs MARTY_TEST_PROMTOOL (Debian's prometheus package)"]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let promtool = marty_tests::server_env("MARTY_TEST_PROMTOOL");
    for args in [["check", "rules", "marty-rules.yaml"], ["test", "rules", "marty-rules.test.yaml"]] {
        let output = Command::new(&promtool).args(args).current_dir(monitoring_dir()).output().expect("run promtool");
        assert!(
            output.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn every_metric_the_dashboard_and_rules_read_is_one_the_store_exports() {
    let stack = Stack::new(Databases::sqlite("store-monitoring"), &[]);
    let _inventory = stack.start("inventory");
    let _payments = stack.start("payments");
    let _orders = stack.start("orders");
    let report = stack.load(&["--orders", "10", "--concurrency", "2"]);
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let mut exported = Vec::new();
    for addr in [stack.orders, stack.inventory, stack.payments] {
        let metrics = support::request_with(addr, "GET", "/metrics", None, &[]).expect("scrape /metrics");
        assert_eq!(metrics.status, 200, "{addr}: {metrics:?}");
        exported.extend(families(&metrics.body));
    }

    let mut read = BTreeSet::new();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(monitoring_dir().join("marty-dashboard.json")).unwrap())
            .expect("the dashboard is JSON");
    for query in dashboard_queries(&dashboard) {
        read.extend(metric_names(&query));
    }
    let rules = std::fs::read_to_string(monitoring_dir().join("marty-rules.yaml")).unwrap();
    let expressions = rule_expressions(&rules);
    assert!(expressions.len() >= 10, "every rule's expression is read: {expressions:#?}");
    for expression in expressions {
        read.extend(metric_names(&expression));
    }
    assert!(read.len() >= 20, "the panels and rules read the metrics they show: {read:?}");
    let missing: Vec<&String> = read.iter().filter(|name| !exported.iter().any(|family| family.has(name))).collect();
    assert!(missing.is_empty(), "read by the dashboard or the rules but not exported by the store: {missing:?}");
}

/// A metric family of an exposition: its name and type (`# TYPE name type`).
struct Family {
    name: String,
    kind: String,
}

impl Family {
    /// Whether `series` is one of this family's sample names.
    fn has(&self, series: &str) -> bool {
        let Some(suffix) = series.strip_prefix(&self.name) else { return false };
        match self.kind.as_str() {
            "counter" => suffix == "_total",
            "histogram" => ["_bucket", "_sum", "_count"].contains(&suffix),
            _ => suffix.is_empty(),
        }
    }
}

fn families(exposition: &str) -> Vec<Family> {
    exposition
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split_whitespace();
            Some(Family { name: words.next()?.to_owned(), kind: words.next()?.to_owned() })
        })
        .collect()
}

/// Every PromQL query of the dashboard: its panels' targets and its variables' queries.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(target["expr"].as_str().expect("a target's expr").to_owned());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().expect("variables") {
        if let Some(query) = variable["query"]["query"].as_str() {
            // `label_values(metric{..}, label)`: the metric is what matters.
            queries.push(query.trim_start_matches("label_values(").split(',').next().unwrap_or("").to_owned());
        }
    }
    queries
}

/// The `expr:` of every rule, on one line or as a `|` block.
fn rule_expressions(rules: &str) -> Vec<String> {
    let mut expressions = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(expr) = line.trim_start().strip_prefix("expr:") else { continue };
        let expr = expr.trim();
        if expr != "|" {
            expressions.push(expr.to_owned());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut block = String::new();
        while let Some(next) = lines.peek().filter(|next| next.len() - next.trim_start().len() > indent) {
            block.push_str(next.trim());
            block.push(' ');
            lines.next();
        }
        expressions.push(block);
    }
    expressions
}

/// The metric names a PromQL expression reads: its identifiers, less functions, keywords, label
/// names (inside `{..}` and after `by` / `without`), strings and Grafana's `$variables`.
fn metric_names(expression: &str) -> BTreeSet<String> {
    let mut kept = String::new();
    let (mut braces, mut quoted, mut grouping) = (0, false, false);
    let mut chars = expression.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            _ if quoted => {}
            '{' => braces += 1,
            '}' => braces -= 1,
            '(' if grouping => braces += 1,
            ')' if grouping && braces == 1 => {
                (braces, grouping) = (0, false);
                kept.push_str("()");
            }
            _ if braces > 0 => {}
            '$' => {
                while chars.peek().is_some_and(|next| next.is_alphanumeric() || *next == '_') {
                    chars.next();
                }
            }
            _ => kept.push(c),
        }
        if braces == 0 && !quoted && (kept.ends_with(" by ") || kept.ends_with(" without ")) {
            grouping = true;
        }
    }
    const KEYWORDS: &[&str] = &[
        "by", "without", "and", "or", "unless", "on", "ignoring", "bool", "offset", // operators
        "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk",
        "quantile", // aggregations
    ];
    let mut names = BTreeSet::new();
    let mut rest = kept.as_str();
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let word_len = rest[start..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        let end = start + word_len.unwrap_or(rest.len() - start);
        let word = &rest[start..end];
        let preceded_by_digit = rest[..start].ends_with(|c: char| c.is_ascii_digit() || c == '.');
        let is_function = rest[end..].trim_start().starts_with('(');
        if !preceded_by_digit && !is_function && !KEYWORDS.contains(&word) {
            names.insert(word.to_owned());
        }
        rest = &rest[end..];
    }
    names
}

#[test]
fn metric_names_are_read_out_of_promql() {
    let names = |expression: &str| metric_names(expression).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le, http_route) (rate(http_server_request_duration_seconds_bucket{job=~"$job", http_route!="/x"}[$__rate_interval])))"#
        ),
        ["http_server_request_duration_seconds_bucket"]
    );
    assert_eq!(
        names("sum by (job) (rate(a_total[5m])) / sum without (instance) (rate(b_total[5m])) > 0.05 and c > 1"),
        ["a_total", "b_total", "c"]
    );
    assert_eq!(names("max by (job, instance, dependency) (marty_circuit_state) > 0"), ["marty_circuit_state"]);
}
