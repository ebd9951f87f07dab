//! Readiness is 503 "starting" until startup has finished, while `/healthz` already answers: here
//! Marty's tables wait for the migration lock the test holds (as when another replica migrates at
//! the same moment), so the outbox relay cannot start. Then the service turns ready by itself.
//! (Its own test binary: the configuration comes from `MARTY_CONFIG`, loaded once per process.)

mod support;

use std::time::{Duration, Instant};

use support::http;

struct Probe;

#[marty::service]
impl Probe {
    #[marty::get("/ping")]
    async fn ping(&self) -> &'static str {
        "pong"
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs MARTY_TEST_POSTGRES_URL"]
async fn readiness_waits_for_startup_while_liveness_answers() {
    let url = marty_tests::server_env("MARTY_TEST_POSTGRES_URL");
    let dir = std::env::temp_dir().join(format!("marty-readiness-startup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("marty.toml");
    std::fs::write(
        &config,
        format!(
            "[dependencies.orders_postgres]\nkind = \"database\"\nurl = \"{url}\"\n\n\
             [events]\nbroker = \"memory\"\n\n[outbox]\nstore = \"orders_postgres\"\n"
        ),
    )
    .unwrap();
    std::env::set_var("MARTY_CONFIG", &config);

    // The lock Marty's migrations take, held as a replica migrating at this moment would hold it.
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let mut migrating = admin.begin().await.unwrap();
    sqlx::query("select pg_advisory_xact_lock(hashtext('marty_schema'))").execute(&mut *migrating).await.unwrap();

    let server = marty::service::server(Probe).expect("configuration loads");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = server.start(listener).unwrap();
    let addr = running.addr();
    for _ in 0..3 {
        assert_eq!(http::get(addr, "/healthz").await.status, 200, "alive while starting");
        let starting = http::get(addr, "/readyz").await;
        assert_eq!(starting.status, 503, "{starting:?}");
        assert!(starting.body.contains(r#""status":"starting""#), "{}", starting.body);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    migrating.commit().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = http::get(addr, "/readyz").await;
        if ready.status == 200 {
            assert!(ready.body.contains(r#""status":"ready""#), "{}", ready.body);
            break;
        }
        assert!(Instant::now() < deadline, "never ready after startup: {ready:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.shutdown().await.unwrap();
}
