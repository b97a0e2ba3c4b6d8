//! The connection pool (`projections::db::connect_pool`).

use std::time::Duration;

use crate::helpers::TestDb;

/// Backend pids of the pool under test (tagged by `application_name`).
async fn backends(db: &TestDb) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'warm-pool-test'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_warm_pool_opens_its_minimum_before_returning_and_keeps_it() {
    let db = TestDb::new().await;
    let url = format!("{}?application_name=warm-pool-test", db.url);

    let pool = projections::db::connect_pool(&url, 4, 6).await.unwrap();
    assert_eq!(pool.size(), 4, "the minimum is open when connect_pool returns");
    assert_eq!(backends(&db).await.len(), 4);

    // A connection closed (as when a backend is terminated) is replaced in
    // the background.
    let mut conn = pool.acquire().await.unwrap();
    let closed: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await.unwrap();
    conn.close_on_drop();
    drop(conn);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let pids = backends(&db).await;
        if pids.len() == 4 && !pids.contains(&closed) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the pool did not return to its minimum: {pids:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pool.close().await;

    // The minimum is capped at the maximum; a lazy pool opens only one.
    let capped = projections::db::connect_pool(&url, 9, 3).await.unwrap();
    assert_eq!(capped.size(), 3);
    capped.close().await;
    let lazy = projections::db::connect_with(&url, 3).await.unwrap();
    assert_eq!(lazy.size(), 1);
    lazy.close().await;
    db.drop().await;
}
