//! The commit-safe cursor (ARCHITECTURE decided 2).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use projections::tail::{self, Cursor};
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{insert_event, settle, TestDb};

async fn read_ids(pool: &PgPool, cursor: &mut Cursor) -> Vec<String> {
    let rows = tail::read_after(pool, *cursor, 100, None).await.unwrap();
    if let Some((last, _)) = rows.last() {
        *cursor = *last;
    }
    rows.into_iter().map(|(_, e)| format!("{}#{}", e.aggregate_id, e.sequence)).collect()
}

#[tokio::test]
async fn open_transaction_holds_back_later_commits_and_none_is_skipped() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let mut cursor = Cursor::ZERO;

    insert_event(pool, "test", "early", 1, "Happened", json!({})).await;
    settle(pool).await;
    assert_eq!(read_ids(pool, &mut cursor).await, ["early#1"]);

    // T1 appends and stays open; T2 and T3 append after it and commit.
    let mut t1 = pool.begin().await.unwrap();
    insert_event(&mut *t1, "test", "slow", 1, "Happened", json!({})).await;
    insert_event(pool, "test", "fast", 1, "Happened", json!({})).await;
    insert_event(pool, "test", "fast", 2, "Happened", json!({})).await;

    // A position cursor would now return fast#1, fast#2 and later skip slow#1.
    assert!(read_ids(pool, &mut cursor).await.is_empty());
    assert!(tail::has_unsettled_after(pool, cursor, None).await.unwrap());

    t1.commit().await.unwrap();
    settle(pool).await;
    assert_eq!(read_ids(pool, &mut cursor).await, ["slow#1", "fast#1", "fast#2"]);
    assert!(read_ids(pool, &mut cursor).await.is_empty());
    assert!(!tail::has_unsettled_after(pool, cursor, None).await.unwrap());
    db.drop().await;
}

#[tokio::test]
async fn rolled_back_transaction_leaves_a_gap_that_is_not_waited_for() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let mut cursor = Cursor::ZERO;

    let mut t1 = pool.begin().await.unwrap();
    insert_event(&mut *t1, "test", "doomed", 1, "Happened", json!({})).await;
    insert_event(pool, "test", "kept", 1, "Happened", json!({})).await;
    assert!(read_ids(pool, &mut cursor).await.is_empty());

    t1.rollback().await.unwrap();
    settle(pool).await;
    assert_eq!(read_ids(pool, &mut cursor).await, ["kept#1"]);
    db.drop().await;
}

#[tokio::test]
async fn envelopes_are_built_from_the_stored_rows() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    insert_event(pool, "user", "u1", 1, "UserRegistered", json!({"a": 1})).await;
    insert_event(pool, "session", "s1", 1, "SessionStarted", json!({"b": 2})).await;
    settle(pool).await;

    let rows = tail::read_after(pool, Cursor::ZERO, 10, None).await.unwrap();
    assert_eq!(rows.len(), 2);
    let (cursor, user) = &rows[0];
    assert!(cursor.txid > 0);
    assert_eq!(cursor.position, user.position);
    assert_eq!(user.aggregate_type, "user");
    assert_eq!(user.aggregate_id, "u1");
    assert_eq!(user.sequence, 1);
    assert_eq!(user.event_type, "UserRegistered");
    assert_eq!(user.event_version, "1.0");
    assert_eq!(user.payload, json!({"a": 1}), "payload is untagged");
    assert_eq!(user.metadata, json!({"request_id": "test"}));
    assert!(rows[0].0 < rows[1].0);

    let only_sessions = ["session".to_owned()];
    let rows = tail::read_after(pool, Cursor::ZERO, 10, Some(&only_sessions)).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1.aggregate_id, "s1");

    let limited = tail::read_after(pool, Cursor::ZERO, 1, None).await.unwrap();
    assert_eq!(limited.len(), 1);
    db.drop().await;
}

#[tokio::test]
async fn encoded_envelopes_decode_to_the_envelopes_read_after_returns() {
    use domain::envelope::Envelope;

    use crate::helpers::INSERT_EVENT;

    let db = TestDb::new().await;
    let pool = &db.pool;
    insert_event(pool, "user", "u1", 1, "UserRegistered", json!({"a": 1, "nested": {"x": [1, 2.5, null]}}))
        .await;
    insert_event(
        pool,
        "session",
        "quote\"back\\slash é 🎵",
        1,
        "SessionStarted",
        json!({"s": "line\nbreak"}),
    )
    .await;
    insert_event(pool, "user", "u1", 2, "Big", json!({"n": 12345678901234567_i64, "f": -0.5e-3})).await;
    // Stored payloads that are not one object tagged by the event type:
    // a unit variant (a string), a second key, a different tag.
    for (sequence, payload) in
        [(3_i64, json!("Unit")), (4, json!({"Odd": {}, "Other": 1})), (5, json!({"Else": {"k": true}}))]
    {
        sqlx::query(INSERT_EVENT)
            .bind("user")
            .bind("u1")
            .bind(sequence)
            .bind("Odd")
            .bind("2.0")
            .bind(payload)
            .bind(json!({"request_id": "r", "actor": "a"}))
            .execute(pool)
            .await
            .unwrap();
    }
    // Stored with whitespace (json keeps the text as written).
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ('user', 'u1', 6, 'Spaced', '1.0', ' { \"Spaced\" :\n {\"a\": [1, {\"b\": \"}\"}]} } ', '{}')",
    )
    .execute(pool)
    .await
    .unwrap();
    settle(pool).await;

    let decoded = tail::read_after(pool, Cursor::ZERO, 100, None).await.unwrap();
    let encoded = tail::read_after_encoded(pool, Cursor::ZERO, 100).await.unwrap();
    assert_eq!(decoded.len(), 7);
    assert_eq!(encoded.len(), decoded.len());
    for ((cursor, envelope), raw) in decoded.iter().zip(&encoded) {
        let from_raw: Envelope = serde_json::from_slice(&raw.value)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&raw.value)));
        assert_eq!(&from_raw, envelope);
        assert_eq!(raw.cursor, *cursor);
        assert_eq!(
            (&raw.aggregate_type, &raw.aggregate_id, raw.sequence, &raw.event_type, &raw.event_version),
            (
                &envelope.aggregate_type,
                &envelope.aggregate_id,
                envelope.sequence,
                &envelope.event_type,
                &envelope.event_version
            )
        );
        // The field set and order of the derived encoding.
        let keys: Vec<String> =
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&raw.value)
                .unwrap()
                .keys()
                .cloned()
                .collect();
        let mut expected: Vec<String> =
            serde_json::to_value(envelope).unwrap().as_object().unwrap().keys().cloned().collect();
        expected.sort();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort();
        assert_eq!(keys_sorted, expected);
    }
    assert_eq!(decoded[3].1.payload, json!("Unit"));
    assert_eq!(decoded[4].1.payload, json!({"Odd": {}, "Other": 1}), "two keys: not unwrapped");
    assert_eq!(decoded[5].1.payload, json!({"Else": {"k": true}}), "another tag: not unwrapped");
    assert_eq!(decoded[6].1.payload, json!({"a": [1, {"b": "}"}]}), "whitespace around the tag");

    let limited = tail::read_after_encoded(pool, encoded[0].cursor, 2).await.unwrap();
    assert_eq!(limited, encoded[1..3].to_vec());
    db.drop().await;
}

#[tokio::test]
async fn checkpoints_round_trip() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    assert_eq!(tail::load_checkpoint(pool, "x").await.unwrap(), Cursor::ZERO);
    let first = Cursor { txid: 12_345, position: 7 };
    tail::store_checkpoint(pool, "x", first).await.unwrap();
    assert_eq!(tail::load_checkpoint(pool, "x").await.unwrap(), first);
    let second = Cursor { txid: 1 << 40, position: 9 };
    tail::store_checkpoint(pool, "x", second).await.unwrap();
    assert_eq!(tail::load_checkpoint(pool, "x").await.unwrap(), second);
    assert_eq!(tail::load_checkpoint(pool, "y").await.unwrap(), Cursor::ZERO);
    db.drop().await;
}

#[tokio::test]
async fn read_after_and_the_unsettled_check_use_the_cursor_index() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
         payload, metadata) SELECT CASE WHEN g % 3 = 0 THEN 'user' ELSE 'session' END, \
         'a' || (g / 10), g % 10, 'Happened', '1', '{\"Happened\":{}}', '{}' \
         FROM generate_series(1, 20000) g",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE events").execute(pool).await.unwrap();
    settle(pool).await;
    let middle = tail::read_after(pool, Cursor::ZERO, 10_000, None).await.unwrap().last().unwrap().0;

    for cursor in [Cursor::ZERO, middle] {
        for filtered in [false, true] {
            let sql = format!("EXPLAIN {}", tail::read_after_sql(filtered));
            let query = sqlx::query_scalar::<_, String>(&sql).bind(cursor.txid).bind(cursor.position);
            let query = if filtered { query.bind(vec!["user".to_owned()]) } else { query };
            let plan = query.bind(100_i64).fetch_all(pool).await.unwrap().join("\n");
            assert!(
                plan.contains("events_cursor_idx") && !plan.contains("Sort"),
                "filtered={filtered} cursor={cursor:?}:\n{plan}"
            );
            // The unsettled check too (a bare EXISTS was planned as a
            // sequential scan of the whole table here).
            let sql = format!("EXPLAIN {}", tail::has_unsettled_after_sql(filtered));
            let query = sqlx::query_scalar::<_, String>(&sql).bind(cursor.txid).bind(cursor.position);
            let query = if filtered { query.bind(vec!["user".to_owned()]) } else { query };
            let plan = query.fetch_all(pool).await.unwrap().join("\n");
            assert!(
                plan.contains("events_cursor_idx") && !plan.contains("Seq Scan"),
                "unsettled check, filtered={filtered} cursor={cursor:?}:\n{plan}"
            );
            let sql = tail::has_unsettled_after_sql(filtered);
            let query = sqlx::query_scalar::<_, bool>(&sql).bind(cursor.txid).bind(cursor.position);
            let query = if filtered { query.bind(vec!["user".to_owned()]) } else { query };
            assert!(query.fetch_one(pool).await.unwrap(), "rows follow {cursor:?}");
        }
    }
    db.drop().await;
}

/// N writers append inside transactions that sleep while open, some rolling
/// back, while a tailer reads continuously: it must see every committed row
/// exactly once, no rolled-back row, each aggregate in sequence order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_writers_are_seen_exactly_once() {
    const WRITERS: usize = 8;
    const TRANSACTIONS: usize = 15;
    let db = TestDb::new().await;
    let done = Arc::new(AtomicBool::new(false));

    let tailer = {
        let pool = db.pool.clone();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut cursor = Cursor::ZERO;
            let mut seen = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let finished = done.load(Ordering::SeqCst);
                let rows = tail::read_after(&pool, cursor, 7, None).await.unwrap();
                for (next, envelope) in &rows {
                    assert!(*next > cursor, "cursor went backwards");
                    cursor = *next;
                    seen.push((envelope.aggregate_id.clone(), envelope.sequence));
                }
                if finished
                    && rows.is_empty()
                    && !tail::has_unsettled_after(&pool, cursor, None).await.unwrap()
                {
                    return seen;
                }
                assert!(tokio::time::Instant::now() < deadline, "tailer timed out");
                let pause = rand::thread_rng().gen_range(0..3);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        })
    };

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::from_entropy();
                let (mut committed, mut rolled_back) = (Vec::new(), Vec::new());
                for t in 0..TRANSACTIONS {
                    let mut tx = pool.begin().await.unwrap();
                    let aggregate = format!("w{w}-t{t}");
                    let count = rng.gen_range(1..=3);
                    let mut rows = Vec::new();
                    for sequence in 1..=count {
                        let pause = rng.gen_range(0..4);
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                        insert_event(&mut *tx, "test", &aggregate, sequence, "Happened", json!({})).await;
                        rows.push((aggregate.clone(), sequence));
                    }
                    let pause = rng.gen_range(0..6);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    if rng.gen_bool(0.25) {
                        tx.rollback().await.unwrap();
                        rolled_back.extend(rows);
                    } else {
                        tx.commit().await.unwrap();
                        committed.extend(rows);
                    }
                }
                (committed, rolled_back)
            })
        })
        .collect();

    let (mut committed, mut rolled_back) = (Vec::new(), Vec::new());
    for writer in writers {
        let (c, r) = writer.await.unwrap();
        committed.extend(c);
        rolled_back.extend(r);
    }
    done.store(true, Ordering::SeqCst);
    let seen = tailer.await.unwrap();

    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a row was seen twice");
    for row in &rolled_back {
        assert!(!unique.contains(row), "rolled-back row {row:?} was seen");
    }
    let mut expected = committed.clone();
    expected.sort();
    let mut actual = seen.clone();
    actual.sort();
    assert_eq!(actual, expected, "seen rows differ from committed rows");
    let mut last_sequence = BTreeMap::new();
    for (aggregate, sequence) in &seen {
        let previous = last_sequence.insert(aggregate.clone(), *sequence).unwrap_or(0);
        assert_eq!(*sequence, previous + 1, "{aggregate} out of order");
    }
    assert!(!committed.is_empty() && !rolled_back.is_empty());
    db.drop().await;
}

#[tokio::test]
async fn a_typed_scan_returns_the_wanted_events_and_moves_past_the_others() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    insert_event(pool, "user", "u1", 1, "UserRegistered", json!({"a": 1})).await;
    insert_event(pool, "session", "s1", 1, "SessionStarted", json!({"b": 2})).await;
    insert_event(pool, "user", "u2", 1, "UserRegistered", json!({"a": 3})).await;
    settle(pool).await;
    let only_sessions = ["session".to_owned()];

    let all = tail::read_after(pool, Cursor::ZERO, 10, None).await.unwrap();
    let scanned = tail::read_scanning(pool, Cursor::ZERO, 10, &only_sessions).await.unwrap();
    assert_eq!(scanned.scanned, 3);
    assert_eq!(scanned.scanned_to, Some(all[2].0), "the cursor passes the unwanted user events");
    assert_eq!(scanned.envelopes.len(), 1);
    let (cursor, session) = &scanned.envelopes[0];
    assert_eq!((*cursor, session), (all[1].0, &all[1].1), "the same envelope as the unfiltered read");

    // A limit that ends on unwanted events still moves the cursor.
    let first = tail::read_scanning(pool, Cursor::ZERO, 1, &only_sessions).await.unwrap();
    assert!(first.envelopes.is_empty());
    assert_eq!(first.scanned_to, Some(all[0].0));
    // Nothing after the end.
    let end = tail::read_scanning(pool, all[2].0, 10, &only_sessions).await.unwrap();
    assert_eq!((end.scanned, end.scanned_to, end.envelopes.len()), (0, None, 0));
    db.drop().await;
}
