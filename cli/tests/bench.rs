//! Smoke tests of `streamforge bench`: every benchmark runs end to end at a
//! tiny size (short phases, few clients, hundreds of events or users) and
//! prints a table with ratios. The figures themselves mean nothing here
//! (debug build); `docs/performance.md` has the real runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use api::config::Settings;
use tools::bench::{self, BenchName, BenchOptions, Report};

/// The broker the test command started (scripts/test).
fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn options(seconds: f64, concurrency: usize) -> (Settings, BenchOptions) {
    api::telemetry::init_for_tests();
    let mut settings = Settings::from_env().expect("settings");
    settings.database_url = projections::db::testing::base_url();
    settings.kafka_brokers = Some(brokers());
    // Tests run side by side on one server (max_connections 100).
    settings.database_min_connections = Some(4);
    let mut o = BenchOptions::new(&settings, seconds);
    o.duration = Duration::from_secs_f64(seconds);
    o.concurrency = Some(concurrency);
    (settings, o)
}

fn assert_has_ratios(report: &Report) {
    let text = report.to_string();
    println!("{text}");
    assert!(text.contains("| figure | value | baseline | ratio | target | result |"), "{text}");
    assert!(!report.rows.is_empty(), "{text}");
    assert!(
        report.rows.iter().any(|r| r.ratio.is_some_and(|x| x.is_finite() && x > 0.0)),
        "no ratio: {text}"
    );
    assert!(report.rows.iter().any(|r| r.pass().is_some()), "no judged row: {text}");
    assert!(!report.notes.iter().any(|n| n.contains("operations failed")), "{text}");
}

async fn run(name: BenchName, seconds: f64, concurrency: usize, f: impl FnOnce(&mut BenchOptions)) -> Report {
    let (settings, mut o) = options(seconds, concurrency);
    f(&mut o);
    bench::run(name, &settings, &o).await.unwrap_or_else(|e| panic!("bench {name}: {e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_bench_prints_ratios() {
    let r = run(BenchName::Login, 0.6, 1, |_| {}).await;
    assert_has_ratios(&r);
    assert!(r.rows.iter().any(|row| row.figure.starts_with("password logins/s")));
    assert!(r.rows.iter().any(|row| row.figure.starts_with("RSS peak")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_http_bench_drives_serve_and_api_processes() {
    // The child is the real binary, not this test executable.
    std::env::set_var("STREAMFORGE_BIN", env!("CARGO_BIN_EXE_streamforge"));
    let r = run(BenchName::LoginHttp, 1.2, 2, |_| {}).await;
    assert_has_ratios(&r);
    for mode in ["`streamforge serve`", "`streamforge api`"] {
        let row =
            r.rows.iter().find(|row| row.figure.contains(mode)).unwrap_or_else(|| panic!("no {mode} row"));
        assert!(row.ratio.is_some_and(|x| x > 0.0), "{mode}: no logins went through");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_bench_prints_ratios() {
    let r = run(BenchName::Commands, 0.4, 2, |_| {}).await;
    assert_has_ratios(&r);
    assert_eq!(r.rows.iter().filter(|row| row.pass().is_some()).count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_bench_prints_ratios_and_loses_nothing() {
    let r = run(BenchName::Relay, 1.0, 1, |o| o.events = Some(400)).await;
    assert_has_ratios(&r);
    let zero_rows: Vec<_> = r.rows.iter().filter(|row| row.baseline == "0").collect();
    assert_eq!(zero_rows.len(), 3, "{r}");
    assert!(zero_rows.iter().all(|row| row.pass() == Some(true)), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshness_bench_prints_ratios() {
    let r = run(BenchName::Freshness, 1.0, 2, |_| {}).await;
    assert_has_ratios(&r);
    assert!(r.rows.iter().any(|row| row.figure.contains("p99")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_bench_prints_ratios() {
    let r = run(BenchName::Replay, 1.0, 1, |o| o.events = Some(800)).await;
    assert_has_ratios(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_bench_prints_ratios() {
    let r = run(BenchName::Queries, 0.6, 2, |o| o.users = Some(300)).await;
    assert_has_ratios(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_bench_prints_ratios() {
    let r = run(BenchName::Fanout, 0.6, 2, |o| o.events = Some(2)).await;
    assert_has_ratios(&r);
    assert!(r.rows.iter().any(|row| row.figure.contains("10000 followers, p99")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_bench_prints_ratios() {
    let r = run(BenchName::Stream, 0.5, 2, |o| {
        o.users = Some(50);
        o.events = Some(10);
    })
    .await;
    assert_has_ratios(&r);
}
