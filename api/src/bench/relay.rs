//! `bench relay`: events per second from the `events` table to the broker
//! through `workers::relay::Relay` (commit-safe read, envelope encoding,
//! idempotent producer, checkpoint after every acknowledged batch), checked
//! end to end by a consumer group that counts lost, duplicated and
//! out-of-order envelopes; against librdkafka producing the same envelopes,
//! already encoded, straight to the same broker with the same producer
//! settings (run before and after the relay; the mean is the baseline).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use domain::envelope::{Envelope, AGGREGATE_TYPES, ENVELOPE_SCHEMA_VERSION};
use indicatif::ProgressBar;
use projections::feed::EventFeed as _;
use projections::kafka_feed::{KafkaFeed, KafkaFeedConfig};
use projections::tail::{self, Cursor};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use uuid::Uuid;
use workers::relay::{Relay, RelayOptions, HEADER_ENVELOPE_VERSION, HEADER_EVENT_TYPE, HEADER_EVENT_VERSION};

use super::data::{seed_users, SeedShape};
use super::{fmt_rate, per_second, ratio, BenchEnv, BenchOptions, Check, Report, Row};

/// Default number of events.
pub const DEFAULT_EVENTS: usize = 100_000;

/// Runs the benchmark on `env`.
///
/// # Errors
/// Setup failures, broker unreachable.
pub async fn run(env: &BenchEnv, o: &BenchOptions) -> anyhow::Result<Report> {
    let pool = env.db.clone();
    let keys = commands::Keyring::derive(&env.settings.master_key()?);
    let shape = SeedShape::REPLAY;
    let users = o.events.unwrap_or(DEFAULT_EVENTS).div_ceil(shape.events_per_user()).max(1);
    seed_users(
        &pool,
        &keys,
        "$argon2id$v=19$m=19456,t=2,p=1$bench$bench",
        users,
        shape,
        &ProgressBar::hidden(),
    )
    .await?;
    let n = users * shape.events_per_user();

    let relay_prefix = env.settings.kafka_topic_prefix.clone();
    let raw_prefix = format!("raw.{relay_prefix}");
    for prefix in [&relay_prefix, &raw_prefix] {
        workers::kafka::ensure_topics(&o.brokers, prefix, AGGREGATE_TYPES, 3, 1).await?;
    }

    // The baseline's input: every envelope, encoded, in commit order.
    let mut envelopes = Vec::with_capacity(n);
    let mut cursor = Cursor::ZERO;
    loop {
        let rows = tail::read_after(&pool, cursor, 10_000, None).await?;
        let Some((last, _)) = rows.last() else { break };
        cursor = *last;
        envelopes.extend(rows.into_iter().map(|(_, e)| e));
    }
    anyhow::ensure!(envelopes.len() == n, "read {} envelopes, seeded {n}", envelopes.len());
    let encoded = envelopes
        .iter()
        .map(|e| Ok((e.topic(&raw_prefix), serde_json::to_vec(e)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let raw_before = produce_raw(&o.brokers, &envelopes, &encoded).await?;

    let batch = RelayOptions::default().batch_size;
    let (published, relay_time) = relay_all(&pool, &o.brokers, &relay_prefix, "bench-relay", batch).await?;

    let raw_after = produce_raw(&o.brokers, &envelopes, &encoded).await?;
    let raw = (raw_before + raw_after) / 2.0;
    let relay_rate = per_second(u64::try_from(published).unwrap_or(0), relay_time);

    let check = consume_all(&o.brokers, &env.settings.kafka_group_prefix, &relay_prefix, &envelopes).await?;

    // Evidence for the cause of a miss: the same relay with ten times larger batches.
    let big_prefix = format!("big.{relay_prefix}");
    workers::kafka::ensure_topics(&o.brokers, &big_prefix, AGGREGATE_TYPES, 3, 1).await?;
    let (big_published, big_time) =
        relay_all(&pool, &o.brokers, &big_prefix, "bench-relay-big", 10 * batch).await?;
    let big_rate = per_second(u64::try_from(big_published).unwrap_or(0), big_time);

    let mut r = Report::new("relay");
    r.note(format!(
        "{n} events ({users} users × {} events: user and session streams), broker {}, 3 partitions per topic",
        shape.events_per_user(),
        o.brokers
    ));
    r.note(format!(
        "relay: batches of {batch}, idempotent producer (acks=all, linger.ms={}); published {published} in {:.2} s",
        workers::kafka::DEFAULT_LINGER_MS,
        relay_time.as_secs_f64()
    ));
    r.note(format!(
        "librdkafka alone: {} before and {} after the relay run",
        fmt_rate(raw_before),
        fmt_rate(raw_after)
    ));
    r.note(format!(
        "end to end: a consumer group read {} messages in {:.2} s",
        check.received,
        check.elapsed.as_secs_f64()
    ));
    r.rows.push(Row::ratio(
        "relay events/s, table → broker",
        fmt_rate(relay_rate),
        format!("{} (librdkafka, same envelopes)", fmt_rate(raw)),
        ratio(relay_rate, raw),
        Check::RatioAtLeast(0.5),
    ));
    r.rows.push(Row::info(
        format!("same relay, batches of {}, events/s", 10 * batch),
        fmt_rate(big_rate),
        format!("{} (librdkafka, same envelopes)", fmt_rate(raw)),
        Some(ratio(big_rate, raw)),
    ));
    r.rows.push(Row::zero("events lost (stored, never consumed)", check.lost));
    r.rows.push(Row::zero("events duplicated on the topic", check.duplicated));
    r.rows.push(Row::zero("events out of order within an aggregate", check.out_of_order));
    Ok(r)
}

/// Runs a fresh relay (checkpoint `checkpoint`) until the table is drained;
/// returns what it published and how long it took.
async fn relay_all(
    pool: &sqlx::PgPool,
    brokers: &str,
    prefix: &str,
    checkpoint: &str,
    batch: usize,
) -> anyhow::Result<(usize, Duration)> {
    let relay = Relay::new(pool.clone(), workers::kafka::producer(brokers)?, prefix.to_owned())
        .with_checkpoint(checkpoint);
    let started = Instant::now();
    let mut published = 0usize;
    loop {
        let k = relay.run_once(batch).await?;
        if k == 0 {
            break;
        }
        published += k;
    }
    Ok((published, started.elapsed()))
}

fn headers(e: &Envelope) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(3)
        .insert(Header { key: HEADER_EVENT_TYPE, value: Some(e.event_type.as_str()) })
        .insert(Header { key: HEADER_EVENT_VERSION, value: Some(e.event_version.as_str()) })
        .insert(Header { key: HEADER_ENVELOPE_VERSION, value: Some(ENVELOPE_SCHEMA_VERSION) })
}

/// Produces every pre-encoded envelope and waits for every acknowledgement;
/// returns messages per second.
async fn produce_raw(
    brokers: &str,
    envelopes: &[Envelope],
    encoded: &[(String, Vec<u8>)],
) -> anyhow::Result<f64> {
    let producer: FutureProducer = workers::kafka::producer(brokers)?;
    let started = Instant::now();
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::new();
    for (e, (topic, value)) in envelopes.iter().zip(encoded) {
        let mut record = FutureRecord::to(topic)
            .key(e.aggregate_id.as_str())
            .payload(value.as_slice())
            .headers(headers(e));
        loop {
            match producer.send_result(record) {
                Ok(f) => {
                    pending.push_back(f);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    match pending.pop_front() {
                        Some(f) => ack(f).await?,
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
    }
    while let Some(f) = pending.pop_front() {
        ack(f).await?;
    }
    Ok(per_second(u64::try_from(envelopes.len()).unwrap_or(0), started.elapsed()))
}

async fn ack(f: DeliveryFuture) -> anyhow::Result<()> {
    match f.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e.into()),
        Err(_) => anyhow::bail!("producer dropped before the delivery report"),
    }
}

struct EndToEnd {
    received: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    elapsed: Duration,
}

/// Reads the relay's topics with a new consumer group until every stored
/// event arrived or nothing new came for 10 s.
async fn consume_all(
    brokers: &str,
    group_prefix: &str,
    prefix: &str,
    stored: &[Envelope],
) -> anyhow::Result<EndToEnd> {
    let group = format!("{group_prefix}-relay-check-{}", Uuid::new_v4().simple());
    let mut feed =
        KafkaFeed::new(&KafkaFeedConfig::for_aggregate_types(brokers, group, prefix, AGGREGATE_TYPES))?;
    let expected: HashSet<Uuid> = stored.iter().map(|e| e.event_id).collect();
    let mut seen: HashSet<Uuid> = HashSet::with_capacity(stored.len());
    let mut last_sequence: HashMap<String, i64> = HashMap::new();
    let (mut received, mut duplicated, mut out_of_order) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    let mut last_progress = Instant::now();
    while seen.len() < expected.len() && last_progress.elapsed() < Duration::from_secs(10) {
        let batch = feed.next_batch(5_000, Duration::from_millis(200)).await?;
        if !batch.is_empty() {
            last_progress = Instant::now();
        }
        for e in batch {
            received += 1;
            if !seen.insert(e.event_id) {
                duplicated += 1;
                continue;
            }
            let key = format!("{}/{}", e.aggregate_type, e.aggregate_id);
            let last = last_sequence.entry(key).or_insert(0);
            if e.sequence <= *last {
                out_of_order += 1;
            }
            *last = (*last).max(e.sequence);
        }
        feed.commit().await?;
    }
    let lost = u64::try_from(expected.difference(&seen).count()).unwrap_or(u64::MAX);
    Ok(EndToEnd { received, lost, duplicated, out_of_order, elapsed: started.elapsed() })
}
