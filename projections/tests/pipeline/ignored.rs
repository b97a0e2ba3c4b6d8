//! Event types a projector ignores (`Projector::ignored_event_types`): the
//! live runner passes them over without a transaction, `has_applied` counts
//! them as applied, and `apply` really leaves the read model alone.

use std::sync::Arc;
use std::time::Duration;

use projections::feed::EventFeed as _;
use projections::pg_feed::{PgFeed, PgFeedConfig};
use projections::profiles::ProfilesProjector;
use projections::runtime::{ProjectionRunner, Projector};

use crate::helpers::{insert_event, settle, TestDb};

/// The body of the golden v1 payload of user event `event_type`
/// (domain/tests/golden, one per event type).
fn golden(event_type: &str) -> serde_json::Value {
    let path = format!("{}/../domain/tests/golden/user/{event_type}.v1.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut tagged: serde_json::Value = serde_json::from_str(&text).unwrap();
    tagged.get_mut(event_type).map(serde_json::Value::take).unwrap_or_else(|| panic!("{path}: not tagged"))
}

async fn profile(pool: &sqlx::PgPool, user_id: &str) -> Option<serde_json::Value> {
    sqlx::query_scalar("SELECT to_jsonb(p) FROM rm_profiles p WHERE user_id = $1::uuid")
        .bind(user_id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn checkpoint(pool: &sqlx::PgPool, user_id: &str) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT sequence FROM projection_checkpoints
         WHERE projector = 'profiles' AND aggregate_type = 'user' AND aggregate_id = $1",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn ignored_user_events_cost_no_transaction_count_as_applied_and_change_no_profile() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let projector = ProfilesProjector;
    let ignored = projector.ignored_event_types();
    assert!(ignored.contains(&"LoginPasswordAccepted"), "{ignored:?}");

    // seq 1 a registration (handled), then one event of each ignored type.
    let registered = golden("UserRegistered");
    let id = registered["user_id"].as_str().unwrap().to_owned();
    insert_event(&pool, "user", &id, 1, "UserRegistered", registered).await;
    for (i, event_type) in ignored.iter().enumerate() {
        insert_event(&pool, "user", &id, 2 + i as i64, event_type, golden(event_type)).await;
    }
    let last = 1 + ignored.len() as i64;
    settle(&pool).await;
    let mut feed = PgFeed::new(pool.clone(), PgFeedConfig::new("ignored-test")).await.unwrap();
    let batch = feed.next_batch(100, Duration::from_secs(5)).await.unwrap();
    assert_eq!(batch.len() as i64, last);

    let runner = ProjectionRunner::new(pool.clone(), vec![Arc::new(ProfilesProjector)]);
    let applied = runner.apply_batch(&batch[..1]).await.unwrap();
    assert_eq!(applied.applied, 1);
    let before = profile(&pool, &id).await.expect("profile row");
    assert_eq!(checkpoint(&pool, &id).await, Some(1));

    // The runner passes them over: nothing applied, no checkpoint moved.
    let applied = runner.apply_batch(&batch[1..]).await.unwrap();
    assert_eq!((applied.applied, applied.skipped), (0, 0));
    assert_eq!(checkpoint(&pool, &id).await, Some(1));
    // Yet a reader waiting for any of them is served (decided 13).
    for sequence in 2..=last {
        assert!(projector.has_applied(&pool, "user", &id, sequence).await.unwrap(), "seq {sequence}");
    }

    // `apply` (the per-event rebuild path) leaves the profile as it is.
    for envelope in &batch[1..] {
        let mut tx = pool.begin().await.unwrap();
        projector.apply(&mut tx, envelope).await.unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(profile(&pool, &id).await.as_ref(), Some(&before));

    // A handled event after them is applied only when the runner applies it.
    insert_event(&pool, "user", &id, last + 1, "ProfileUpdated", golden("ProfileUpdated")).await;
    assert!(!projector.has_applied(&pool, "user", &id, last + 1).await.unwrap());
    settle(&pool).await;
    let batch = feed.next_batch(100, Duration::from_secs(5)).await.unwrap();
    assert_eq!(batch.len(), 1);
    assert_eq!(runner.apply_batch(&batch).await.unwrap().applied, 1);
    assert_eq!(checkpoint(&pool, &id).await, Some(last + 1));
    assert_ne!(profile(&pool, &id).await.as_ref(), Some(&before), "the update changed the profile");
    assert!(projector.has_applied(&pool, "user", &id, last + 1).await.unwrap());
    drop(feed);
    db.drop().await;
}
