//! The `marty.toml` contract as users meet it: defaults, overrides, expansion, and errors that name
//! file, line and key with a fix.

use std::time::Duration;

use marty_config::{Backoff, Config, DependencyKind, Environment, Origin};

const DESIGN_EXAMPLE: &str = r#"
[service]
name = "orders"

[http]
addr = "127.0.0.1:8080"

[telemetry]
log_format = "json"

[dependencies.orders_db]
kind = "database"
url = "sqlite://orders.db?mode=rwc"
max_concurrent = 10
max_wait = "0ms"
timeout = "10s"
circuit_breaker = { failure_rate = 0.5, slow_call_rate = 1.0, slow_call_duration = "5s", window = 100, min_calls = 20, open_for = "30s", half_open_calls = 3 }
retry = { max_attempts = 3, backoff = "exponential", initial = "50ms", max = "2s", jitter = true }

[dependencies.payments_api]
kind = "api"

[dependencies.sessions]
kind = "cache"
timeout = "250ms"

[events]
broker = "memory"

[outbox]
store = "orders_db"
batch_size = 100
"#;

fn errors_of(text: &str) -> Vec<String> {
    Config::parse(text, "marty.toml").unwrap_err().iter().map(ToString::to_string).collect()
}

#[test]
fn the_documented_example_parses_with_kind_defaults() {
    let config = Config::parse(DESIGN_EXAMPLE, "marty.toml").unwrap();
    let db = config.dependency("orders_db").unwrap();
    assert_eq!(db.kind, DependencyKind::Database);
    assert_eq!(db.circuit_breaker.slow_call_duration, Duration::from_secs(5));
    assert_eq!(db.retry.backoff, Backoff::Exponential);
    let api = config.dependency("payments_api").unwrap();
    assert_eq!((api.timeout, api.max_concurrent), (Duration::from_secs(15), 100));
    let cache = config.dependency("sessions").unwrap();
    assert_eq!(cache.timeout, Duration::from_millis(250));
    assert_eq!(
        cache.circuit_breaker.slow_call_duration,
        Duration::from_millis(250),
        "slow calls default to the timeout"
    );
    assert_eq!(config.outbox.unwrap().store, "orders_db");
    assert_eq!(config.http.addr.port(), 8080);
}

#[test]
fn an_unknown_key_names_file_line_key_and_the_nearest_valid_key() {
    let errors = errors_of("[dependencies.orders_db]\nkind = \"database\"\nmax_concurent = 5\n");
    assert_eq!(
        errors,
        ["marty.toml:3: key `dependencies.orders_db.max_concurent`: unknown key\n  help: did you mean `max_concurrent`? valid keys here: `kind`, `url`, `max_concurrent`, `max_wait`, `timeout`, `circuit_breaker`, `retry`, `readiness`, `fault`"]
    );
}

#[test]
fn unknown_keys_inside_inline_tables_and_sections_are_caught() {
    let errors =
        errors_of("[servce]\nname = \"x\"\n[dependencies.db]\nkind = \"database\"\nretry = { max_atempts = 2 }\n");
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0].starts_with("marty.toml:1: key `servce`: unknown key\n  help: did you mean `service`?"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].starts_with(
            "marty.toml:5: key `dependencies.db.retry.max_atempts`: unknown key\n  help: did you mean `max_attempts`?"
        ),
        "{}",
        errors[1]
    );
}

#[test]
fn every_error_is_reported_in_one_pass() {
    let text = "[dependencies.db]\nkind = \"database\"\ntimeout = \"10x\"\nmax_concurrent = 0\ncircuit_breaker = { failure_rate = 1.5, window = 5, min_calls = 10 }\n[dependencies.other]\nkind = \"queue\"\n";
    let errors = errors_of(text);
    assert_eq!(errors.len(), 5, "{errors:#?}");
    assert_eq!(errors[0], "marty.toml:3: key `dependencies.db.timeout`: invalid duration `10x`: unknown unit `x`\n  help: write a whole number followed by a unit (`ns`, `us`, `ms`, `s`, `m`, `h` or `d`), e.g. `\"250ms\"` or `\"10s\"`");
    assert_eq!(
        errors[1],
        "marty.toml:4: key `dependencies.db.max_concurrent`: 0 is out of range: it must be between 1 and 1000000"
    );
    assert!(
        errors[2].starts_with("marty.toml:5: key `dependencies.db.circuit_breaker.failure_rate`: 1.5 is out of range"),
        "{}",
        errors[2]
    );
    assert!(errors[3].contains("`min_calls` (10) is larger than `window` (5)"), "{}", errors[3]);
    assert_eq!(errors[4], "marty.toml:7: key `dependencies.other.kind`: unknown value `queue`\n  help: valid values: `database`, `api`, `cache`");
}

#[test]
fn a_missing_kind_and_a_wrong_type_say_what_to_write() {
    let errors = errors_of(
        "[dependencies.db]\nurl = \"sqlite::memory:\"\n[dependencies.cache]\nkind = \"cache\"\ntimeout = 5\n",
    );
    assert_eq!(errors[0], "marty.toml:1: key `dependencies.db.kind`: missing key\n  help: add `kind = \"database\"` (or `\"api\"`, `\"cache\"`) under `[dependencies.db]`");
    assert_eq!(errors[1], "marty.toml:5: key `dependencies.cache.timeout`: expected a duration string, found an integer\n  help: write it as `timeout = \"10s\"`");
}

#[test]
fn retry_and_the_breaker_are_turned_off_per_dependency_with_false() {
    let text = "[dependencies.payments]\nkind = \"api\"\nretry = false\ncircuit_breaker = false\n\
                [dependencies.ledger]\nkind = \"api\"\nretry = true\ncircuit_breaker = true\n";
    let config = Config::parse(text, "marty.toml").unwrap();
    let payments = config.dependency("payments").unwrap();
    assert_eq!(payments.retry.max_attempts, 1, "one attempt: no retry");
    assert!(!payments.circuit_breaker.enabled);
    let ledger = config.dependency("ledger").unwrap();
    assert_eq!(ledger.retry.max_attempts, 3, "`true` keeps the defaults");
    assert!(ledger.circuit_breaker.enabled);

    // The same from the environment, as a reload or a deploy would set it.
    let env = Environment::from_pairs([("MARTY__DEPENDENCIES__LEDGER__RETRY", "false")]);
    let config = Config::parse_at_startup(text, "marty.toml", &env).unwrap();
    assert_eq!(config.dependency("ledger").unwrap().retry.max_attempts, 1);

    let errors = errors_of("[dependencies.payments]\nkind = \"api\"\nretry = \"off\"\n");
    assert_eq!(errors, ["marty.toml:3: key `dependencies.payments.retry`: expected a table or a boolean, found a string\n  help: `retry = false` turns it off; `retry = { ... }` configures it"]);
}

#[test]
fn a_toml_syntax_error_names_its_line() {
    let errors = errors_of("[dependencies.db]\nkind = \"database\"\ntimeout = \"10s\n");
    assert!(errors[0].starts_with("marty.toml:3: invalid TOML"), "{}", errors[0]);
}

#[test]
fn the_outbox_store_must_be_a_declared_database() {
    let errors = errors_of("[dependencies.orders_db]\nkind = \"database\"\n[outbox]\nstore = \"orders_dbb\"\n");
    assert_eq!(errors, ["marty.toml:4: key `outbox.store`: unknown dependency `orders_dbb`\n  help: did you mean `orders_db`? database dependencies: `orders_db`"]);
}

#[test]
fn environment_overrides_win_and_are_typed_like_the_file() {
    let env = Environment::from_pairs([
        ("MARTY__DEPENDENCIES__ORDERS_DB__MAX_CONCURRENT", "20"),
        ("MARTY__DEPENDENCIES__ORDERS_DB__CIRCUIT_BREAKER__OPEN_FOR", "5s"),
        ("MARTY__DEPENDENCIES__ORDERS_DB__RETRY__JITTER", "false"),
        ("UNRELATED", "x"),
    ]);
    let config = Config::parse_at_startup(DESIGN_EXAMPLE, "marty.toml", &env).unwrap();
    let db = config.dependency("orders_db").unwrap();
    assert_eq!(db.max_concurrent, 20);
    assert_eq!(db.circuit_breaker.open_for, Duration::from_secs(5));
    assert!(!db.retry.jitter);
    // The file as written is untouched by the environment when compiling.
    assert_eq!(
        Config::parse(DESIGN_EXAMPLE, "marty.toml").unwrap().dependency("orders_db").unwrap().max_concurrent,
        10
    );
}

#[test]
fn a_bad_override_names_the_variable() {
    let env = Environment::from_pairs([
        ("MARTY__DEPENDENCIES__ORDERS_DB__TIMEOUT", "soon"),
        ("MARTY__DEPENDENCIES__ORDERS_DB__MAX_CONCURENT", "3"),
    ]);
    let errors = Config::parse_at_startup(DESIGN_EXAMPLE, "marty.toml", &env).unwrap_err();
    let errors: Vec<_> = errors.iter().collect();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[1].origin, Origin::EnvVar("MARTY__DEPENDENCIES__ORDERS_DB__TIMEOUT".into()));
    assert_eq!(errors[1].problem, "invalid duration `soon`: it must start with a whole number");
    assert_eq!(
        errors[0].to_string(),
        "environment variable `MARTY__DEPENDENCIES__ORDERS_DB__MAX_CONCURENT` (overriding marty.toml): key `dependencies.orders_db.max_concurent`: unknown key\n  help: did you mean `max_concurrent`? valid keys here: `kind`, `url`, `max_concurrent`, `max_wait`, `timeout`, `circuit_breaker`, `retry`, `readiness`, `fault`"
    );
}

#[test]
fn variables_expand_at_startup_only_and_a_missing_one_is_an_error() {
    let text = "[dependencies.db]\nkind = \"database\"\nurl = \"postgres://app:${DB_PASSWORD}@127.0.0.1/orders\"\n";
    let compiled = Config::parse(text, "marty.toml").unwrap();
    assert_eq!(
        compiled.dependency("db").unwrap().url.as_deref(),
        Some("postgres://app:${DB_PASSWORD}@127.0.0.1/orders")
    );
    let env = Environment::from_pairs([("DB_PASSWORD", "hunter2")]);
    let started = Config::parse_at_startup(text, "marty.toml", &env).unwrap();
    assert_eq!(started.dependency("db").unwrap().url.as_deref(), Some("postgres://app:hunter2@127.0.0.1/orders"));
    assert!(!format!("{started:?}").contains("hunter2"), "Debug must not print secrets");
    let errors = Config::parse_at_startup(text, "marty.toml", &Environment::default()).unwrap_err().to_string();
    assert!(
        errors.starts_with("marty.toml:3: key `dependencies.db.url`: environment variable `DB_PASSWORD` is not set"),
        "{errors}"
    );
}

#[test]
fn load_reads_a_file_and_names_it_in_errors() {
    let dir = std::env::temp_dir().join(format!("marty-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("marty.toml");
    std::fs::write(&path, "[dependencies.db]\nkind = \"database\"\ntimeout = \"0s\"\n").unwrap();
    let error = Config::load(&path).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!(
            "{}:3: key `dependencies.db.timeout`: the duration must be greater than zero",
            path.display()
        )),
        "{error}"
    );
    let missing = Config::load(&dir.join("absent.toml")).unwrap_err().to_string();
    assert!(missing.contains("cannot read the configuration file"), "{missing}");
}

#[test]
fn durations_expand_variables_at_startup_and_are_left_unchecked_when_compiling() {
    let text = "[dependencies.db]\nkind = \"database\"\ntimeout = \"${DB_TIMEOUT}\"\n";
    let compiled = Config::parse(text, "marty.toml").expect("a variable cannot be checked before startup");
    assert_eq!(compiled.dependency("db").unwrap().timeout, Duration::from_secs(10), "the kind's default stands in");
    let env = Environment::from_pairs([("DB_TIMEOUT", "750ms")]);
    let started = Config::parse_at_startup(text, "marty.toml", &env).unwrap();
    assert_eq!(started.dependency("db").unwrap().timeout, Duration::from_millis(750));
    let env = Environment::from_pairs([("DB_TIMEOUT", "soon")]);
    let error = Config::parse_at_startup(text, "marty.toml", &env).unwrap_err().to_string();
    assert!(error.starts_with("marty.toml:3: key `dependencies.db.timeout`: invalid duration `soon`"), "{error}");
}

#[test]
fn the_outbox_relay_settings_have_defaults_and_are_checked() {
    let base = "[dependencies.orders_db]\nkind = \"database\"\n[outbox]\nstore = \"orders_db\"\n";
    let outbox = Config::parse(base, "marty.toml").unwrap().outbox.unwrap();
    assert_eq!(
        (outbox.batch_size, outbox.poll_interval, outbox.max_attempts, outbox.retention),
        (100, Duration::from_millis(500), 10, Duration::ZERO),
        "rows are deleted once acknowledged unless a retention is set"
    );
    let tuned = format!("{base}batch_size = 500\npoll_interval = \"2s\"\nmax_attempts = 3\nretention = \"1h\"\n");
    let outbox = Config::parse(&tuned, "marty.toml").unwrap().outbox.unwrap();
    assert_eq!(
        (outbox.batch_size, outbox.poll_interval, outbox.max_attempts, outbox.retention),
        (500, Duration::from_secs(2), 3, Duration::from_secs(3600))
    );
    let errors = errors_of(&format!("{base}max_attempts = 0\nretension = \"1h\"\n"));
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("outbox.max_attempts"), "{errors:?}");
    assert!(errors[1].contains("did you mean `retention`?"), "{errors:?}");
}

#[test]
fn the_saga_settings_have_defaults_and_are_checked() {
    let defaults = Config::parse("", "marty.toml").unwrap().sagas;
    assert_eq!(
        (defaults.lease, defaults.poll_interval, defaults.compensation_attempts),
        (Duration::from_secs(10), Duration::from_secs(1), 10)
    );
    let tuned =
        Config::parse("[sagas]\nlease = \"2s\"\ncompensation_attempts = 3\nbackoff_max = \"1s\"\n", "marty.toml")
            .unwrap()
            .sagas;
    assert_eq!(
        (tuned.lease, tuned.compensation_attempts, tuned.backoff_max),
        (Duration::from_secs(2), 3, Duration::from_secs(1))
    );
    let errors = errors_of("[sagas]\nlease = \"0s\"\ncompensation_atempts = 3\n");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors.iter().any(|error| error.starts_with("marty.toml:2: key `sagas.lease`: must be longer than zero")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|error| error.contains("did you mean `compensation_attempts`?")), "{errors:?}");
}

#[test]
fn compensations_are_retried_for_longer_than_any_breaker_stays_open() {
    assert_eq!(Config::parse("", "marty.toml").unwrap().sagas.compensation_deadline, Duration::from_secs(300));
    // Unset, the deadline outlasts the longest `open_for` twice over.
    let slow_breaker = "[dependencies.ledger]\nkind = \"api\"\ncircuit_breaker = { open_for = \"10m\" }\n";
    let sagas = Config::parse(slow_breaker, "marty.toml").unwrap().sagas;
    assert_eq!(sagas.compensation_deadline, Duration::from_secs(1200));
    // Set, it must be longer than every `open_for`: the error names the breaker and a value that fits.
    let errors = errors_of(&format!("{slow_breaker}[sagas]\ncompensation_deadline = \"5m\"\n"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("marty.toml:5: key `sagas.compensation_deadline`: is not longer than `ledger`'s circuit breaker `open_for` (10m)"),
        "{errors:?}"
    );
    assert!(errors[0].contains("compensation_deadline = \"20m\""), "{errors:?}");
    let tuned = Config::parse(&format!("{slow_breaker}[sagas]\ncompensation_deadline = \"1h\"\n"), "marty.toml");
    assert_eq!(tuned.unwrap().sagas.compensation_deadline, Duration::from_secs(3600));
}

#[test]
fn a_replica_name_is_what_a_pod_name_is_made_of() {
    let sagas = Config::parse("[sagas]\nreplica = \"orders-7f9c-x2\"\n", "marty.toml").unwrap().sagas;
    assert_eq!(sagas.replica.as_deref(), Some("orders-7f9c-x2"));
    assert_eq!(Config::parse("", "marty.toml").unwrap().sagas.replica, None);
    let errors = errors_of("[sagas]\nreplica = \"orders 1/#2\"\n");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("marty.toml:2: key `sagas.replica`: `orders 1/#2` is not a replica name"),
        "{errors:?}"
    );
}

#[test]
fn a_dependency_is_reported_in_readiness_unless_declared_required() {
    let base = "[dependencies.ledger]\nkind = \"api\"\n";
    let reported = Config::parse(base, "marty.toml").unwrap();
    assert_eq!(reported.dependencies["ledger"].readiness, marty_config::DependencyReadiness::Reported);
    let required = Config::parse(&format!("{base}readiness = \"required\"\n"), "marty.toml").unwrap();
    assert_eq!(required.dependencies["ledger"].readiness, marty_config::DependencyReadiness::Required);
    let errors = errors_of(&format!("{base}readiness = \"requried\"\n"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("did you mean `required`?"), "{errors:?}");
}

#[test]
fn broker_topology_and_credentials_are_read_and_checked() {
    let text = r#"
[events]
broker = "kafka"
url = "kafka-0:9093"

[events.kafka]
partitions = 12
replication_factor = 3
properties = { "security.protocol" = "SASL_SSL", "sasl.mechanism" = "SCRAM-SHA-512", "sasl.password" = "${KAFKA_PASSWORD}", "socket.keepalive.enable" = true }

[events.nats]
replicas = 3
storage = "memory"
max_age = "1d"
credentials = "/etc/nats/orders.creds"
tls_ca = "/etc/nats/ca.pem"

[events.rabbitmq]
queue_type = "classic"
"#;
    let env = Environment::from_pairs([("KAFKA_PASSWORD", "s3cret")]);
    let events = Config::parse_at_startup(text, "marty.toml", &env).unwrap().events.unwrap();
    assert_eq!((events.kafka.partitions, events.kafka.replication_factor), (12, 3));
    assert!(events.kafka.properties.contains(&("sasl.password".to_owned(), "s3cret".to_owned())));
    assert!(events.kafka.properties.contains(&("socket.keepalive.enable".to_owned(), "true".to_owned())));
    assert_eq!(events.nats.replicas, 3);
    assert_eq!(events.nats.storage, marty_config::NatsStorage::Memory);
    assert_eq!(events.nats.max_age, Duration::from_secs(86_400));
    assert_eq!(events.nats.credentials.as_deref(), Some("/etc/nats/orders.creds"));
    assert_eq!(events.rabbitmq.queue_type, marty_config::QueueType::Classic);

    let defaults = Config::parse("[events]\nbroker = \"rabbitmq\"\n", "marty.toml").unwrap().events.unwrap();
    assert_eq!(defaults.rabbitmq.queue_type, marty_config::QueueType::Quorum, "quorum queues unless told");
    assert_eq!((defaults.kafka.partitions, defaults.kafka.replication_factor, defaults.nats.replicas), (3, 1, 1));

    let wrong = r#"
[events]
broker = "nats"
[events.nats]
replicas = 7
tls_client_cert = "/etc/nats/client.pem"
[events.rabbitmq]
queue_type = "quorom"
tls_client_key = "/etc/rabbitmq/client-key.pem"
[events.kafka]
properties = { "acks" = "1" }
"#;
    let errors: Vec<String> = Config::parse(wrong, "marty.toml").unwrap_err().iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 5, "{errors:#?}");
    assert!(errors[0].starts_with("marty.toml:5: key `events.nats.replicas`"), "{}", errors[0]);
    assert!(errors[1].contains("key `events.nats.tls_client_cert`: a client cert without its key"), "{}", errors[1]);
    assert!(
        errors[2].contains("unknown value `quorom`") && errors[2].contains("did you mean `quorum`?"),
        "{}",
        errors[2]
    );
    assert!(errors[3].contains("key `events.rabbitmq.tls_client_key`: a client key without its cert"), "{}", errors[3]);
    assert!(errors[4].contains("key `events.kafka.properties.acks`: Marty sets this property itself"), "{}", errors[4]);
}

#[test]
fn histogram_buckets_are_increasing_seconds() {
    let config = Config::parse("[telemetry]\nhistogram_buckets = [0.01, 0.1, 1, 10]\n", "marty.toml").unwrap();
    assert_eq!(config.telemetry.histogram_buckets, Some(vec![0.01, 0.1, 1.0, 10.0]));
    assert_eq!(Config::parse("", "marty.toml").unwrap().telemetry.histogram_buckets, None);
    for (value, problem) in [
        ("[0.1, 0.1]", "bounds must increase: 0.1 comes after 0.1"),
        ("[0, 1]", "bounds must be above zero"),
        ("[]", "give 1 to 30 bounds, not 0"),
        ("[\"1s\"]", "every bound must be a number of seconds"),
        ("\"0.1\"", "expected an array of numbers, found a string"),
    ] {
        let text = format!("[telemetry]\nhistogram_buckets = {value}\n");
        let errors = Config::parse(&text, "marty.toml").unwrap_err().to_string();
        assert!(errors.starts_with("marty.toml:2: key `telemetry.histogram_buckets`: "), "{errors}");
        assert!(errors.contains(problem), "{value}: {errors}");
    }
}

#[test]
fn openapi_is_off_unless_asked_for_and_its_paths_are_literal_routes() {
    assert_eq!(Config::parse("", "marty.toml").unwrap().openapi, None);
    let config = Config::parse("[openapi]\n", "marty.toml").unwrap();
    let openapi = config.openapi.expect("[openapi] alone turns it on");
    assert_eq!((openapi.path.as_str(), openapi.title, openapi.ui), ("/openapi.json", None, None));
    let config = Config::parse(
        "[openapi]\npath = \"/api/openapi.json\"\ntitle = \"Orders\"\ndescription = \"Places orders\"\nui = \"/docs\"\n",
        "marty.toml",
    )
    .unwrap();
    let openapi = config.openapi.unwrap();
    assert_eq!(openapi.path, "/api/openapi.json");
    assert_eq!((openapi.title.as_deref(), openapi.ui.as_deref()), (Some("Orders"), Some("/docs")));
    assert_eq!(openapi.description.as_deref(), Some("Places orders"));

    let errors = errors_of("[openapi]\npath = \"openapi.json\"\nui = \"/docs/{page}\"\nformat = \"yaml\"\n");
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        errors.iter().any(|error| error.starts_with("marty.toml:4: key `openapi.format`: unknown key")),
        "{errors:#?}"
    );
    assert!(errors.contains(&"marty.toml:2: key `openapi.path`: `openapi.json` is not a route path\n  help: write a literal path that starts with `/`, e.g. `path = \"/openapi.json\"`".to_owned()), "{errors:#?}");
    assert!(
        errors
            .iter()
            .any(|error| error.starts_with("marty.toml:3: key `openapi.ui`: `/docs/{page}` is not a route path")),
        "{errors:#?}"
    );
    let errors = errors_of("[openapi]\nui = \"/openapi.json\"\n");
    assert_eq!(errors, ["marty.toml:2: key `openapi.ui`: the page and the description share a path\n  help: serve the page elsewhere, e.g. `ui = \"/docs\"`"]);
}

#[test]
fn faults_are_read_per_dependency_and_stay_off_unless_enabled() {
    let text = "[dependencies.payments]\nkind = \"api\"\n\n[dependencies.payments.fault]\nlatency = \"200ms\"\nerror_rate = 0.25\n";
    let config = Config::parse(text, "marty.toml").unwrap();
    let fault = config.dependency("payments").unwrap().fault.clone().unwrap();
    assert_eq!((fault.latency, fault.error_rate, fault.timeout_rate), (Duration::from_millis(200), 0.25, 0.0));
    assert!(fault.is_active());
    assert!(!config.faults.enabled, "a fault table alone enables nothing");

    let env = Environment::from_pairs([("MARTY__FAULTS__ENABLED", "true"), ("FAULTS_TOKEN", "0123456789abcdef")]);
    let text = format!("{text}\n[faults]\ntoken = \"${{FAULTS_TOKEN}}\"\n");
    let config = Config::parse_at_startup(&text, "marty.toml", &env).unwrap();
    assert!(config.faults.enabled);
    assert_eq!(config.faults.token.as_deref(), Some("0123456789abcdef"));
    assert!(!format!("{:?}", config.faults).contains("0123"), "the token is never printed");
}

#[test]
fn a_fault_that_cannot_be_and_a_guessable_token_are_errors() {
    let text = "[dependencies.payments]\nkind = \"api\"\nfault = { error_rate = 0.7, timeout_rate = 0.5 }\n\n[faults]\nenabled = true\ntoken = \"short\"\n";
    assert_eq!(
        errors_of(text),
        [
            "marty.toml:3: key `dependencies.payments.fault.timeout_rate`: `error_rate` (0.7) and `timeout_rate` (0.5) add up to more than 1\n  help: they are shares of the same attempts: keep their sum at most 1",
            "marty.toml:7: key `faults.token`: is 5 characters; a token this short can be guessed\n  help: use at least 16 random characters from a secret, e.g. `token = \"${MARTY_FAULTS_TOKEN}\"`",
        ]
    );
    // When compiling, a token from a variable is only known at startup.
    assert!(Config::parse("[faults]\ntoken = \"${T}\"\n", "marty.toml").is_ok());
}
