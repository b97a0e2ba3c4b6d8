//! `bench relay`: events per second from the `events` table to the broker
//! through `workers::relay::Relay` as production runs it (leader lock held,
//! commit-safe reads, envelope encoding, idempotent producer, pipelined
//! batches, in-order checkpoints after acknowledgements), with a standby
//! relay on the same checkpoint running alongside; checked end to end by a
//! consumer group that counts lost, duplicated and out-of-order envelopes;
//! against librdkafka producing the same envelopes, already encoded,
//! straight to the same broker with the same producer settings (run before
//! and after the relay; the mean is the baseline). Info rows: the relay's
//! CPU time, and the former stop-and-wait relay (one batch in flight).

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
use workers::relay::{
    LeaderLock, Relay, RelayOptions, HEADER_ENVELOPE_VERSION, HEADER_EVENT_TYPE, HEADER_EVENT_VERSION,
};

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
        workers::kafka::ensure_topics(
            &o.brokers,
            prefix,
            AGGREGATE_TYPES,
            env.settings.kafka_topic_partitions,
            1,
        )
        .await?;
    }

    // The baseline's input: every envelope, encoded, in commit order.
    // The tail reads settled events only: a transaction open elsewhere on
    // the server (another database's) holds the horizon back for a moment.
    let mut envelopes = Vec::with_capacity(n);
    let mut cursor = Cursor::ZERO;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while envelopes.len() < n && std::time::Instant::now() < deadline {
        let rows = tail::read_after(&pool, cursor, 10_000, None).await?;
        let Some((last, _)) = rows.last() else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        cursor = *last;
        envelopes.extend(rows.into_iter().map(|(_, e)| e));
    }
    anyhow::ensure!(envelopes.len() == n, "read {} envelopes, seeded {n}", envelopes.len());
    let encoded = envelopes
        .iter()
        .map(|e| Ok((e.topic(&raw_prefix), serde_json::to_vec(e)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let raw_before = produce_raw(&o.brokers, &envelopes, &encoded).await?;

    let options = RelayOptions::default();
    // As production runs it: with the analysts' pseudonymous subjects.
    let pseudonyms = commands::keys::SubjectPseudonyms::derive(&keys, &env.settings.analytics_subject_key_id);
    let relayed = relay_pipelined(&pool, &pseudonyms, &o.brokers, &relay_prefix, "bench-relay").await?;

    let raw_after = produce_raw(&o.brokers, &envelopes, &encoded).await?;
    let raw = (raw_before + raw_after) / 2.0;
    let relay_rate = per_second(u64::try_from(relayed.published).unwrap_or(0), relayed.elapsed);

    let check = consume_all(&o.brokers, &env.settings.kafka_group_prefix, &relay_prefix, &envelopes).await?;

    // The former relay for comparison: one batch of 500 in flight at a time.
    let stop_prefix = format!("stop.{relay_prefix}");
    workers::kafka::ensure_topics(&o.brokers, &stop_prefix, AGGREGATE_TYPES, 3, 1).await?;
    let stop_batch = 500;
    let (stop_published, stop_time) =
        relay_stop_and_wait(&pool, &o.brokers, &stop_prefix, "bench-relay-stop", stop_batch).await?;
    let stop_rate = per_second(u64::try_from(stop_published).unwrap_or(0), stop_time);

    let mut r = Report::new("relay");
    r.note(format!(
        "{n} events ({users} users × {} events: user and session streams), broker {}, {} partitions per topic",
        shape.events_per_user(),
        o.brokers,
        env.settings.kafka_topic_partitions
    ));
    r.note(format!(
        "relay: leader lock held, a standby relay on the same checkpoint alongside; batches of {}, \
         up to {} batches / {} messages in flight; idempotent producer (acks=all, \
         max.in.flight.requests.per.connection={}, linger.ms={}); published {} in {:.2} s",
        options.batch_size,
        options.max_in_flight_batches,
        options.max_in_flight_messages,
        workers::kafka::MAX_IN_FLIGHT_REQUESTS,
        workers::kafka::DEFAULT_LINGER_MS,
        relayed.published,
        relayed.elapsed.as_secs_f64()
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
        "relay process CPU while relaying (all threads, incl. librdkafka)",
        relayed.cpu.map_or_else(|| "n/a".to_owned(), |cpu| format!("{:.0} % of one core", 100.0 * cpu)),
        format!("{:.2} s wall", relayed.elapsed.as_secs_f64()),
        None,
    ));
    r.rows.push(Row::info(
        format!("stop-and-wait relay (one batch of {stop_batch} in flight), events/s"),
        fmt_rate(stop_rate),
        format!("{} (librdkafka, same envelopes)", fmt_rate(raw)),
        Some(ratio(stop_rate, raw)),
    ));
    r.rows.push(Row::zero("events lost (stored, never consumed)", check.lost));
    r.rows.push(Row::zero("events duplicated on the topic", check.duplicated));
    r.rows.push(Row::zero("events out of order within an aggregate", check.out_of_order));
    Ok(r)
}

/// What the pipelined run did.
struct Relayed {
    published: usize,
    elapsed: Duration,
    /// Process CPU time over wall time (1.0 = one core busy), when
    /// `/proc/self/stat` is readable.
    cpu: Option<f64>,
}

/// Drains the table through a fresh relay (checkpoint `checkpoint`) the way
/// `Relay::run` does: it takes the checkpoint's leader lock and drains as
/// leader, while a second relay on the same checkpoint stands by (it must
/// publish nothing: the end-to-end check counts duplicates).
async fn relay_pipelined(
    pool: &sqlx::PgPool,
    pseudonyms: &commands::keys::SubjectPseudonyms,
    brokers: &str,
    prefix: &str,
    checkpoint: &str,
) -> anyhow::Result<Relayed> {
    let relay = Relay::new(pool.clone(), workers::kafka::producer(brokers)?, prefix.to_owned())
        .with_checkpoint(checkpoint)
        .with_pseudonyms(pseudonyms.clone());
    let mut lock = LeaderLock::try_acquire(pool, checkpoint)
        .await?
        .ok_or_else(|| anyhow::anyhow!("leader lock of `{checkpoint}` already held"))?;
    let standby = Relay::new(pool.clone(), workers::kafka::producer(brokers)?, prefix.to_owned())
        .with_checkpoint(checkpoint);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let standby = tokio::spawn(async move { standby.run(shutdown).await });

    let cpu_before = process_cpu();
    let started = Instant::now();
    let outcome = relay.drain_as_leader(&mut lock).await;
    let elapsed = started.elapsed();
    let cpu = match (cpu_before, process_cpu()) {
        (Some(before), Some(after)) if !elapsed.is_zero() => {
            Some(after.saturating_sub(before).as_secs_f64() / elapsed.as_secs_f64())
        }
        _ => None,
    };
    // Stop the standby before releasing the lock, so that it never leads.
    let _ = stop.send(true);
    let _ = standby.await;
    lock.release().await;
    Ok(Relayed { published: outcome?.published, elapsed, cpu })
}

/// Runs a fresh relay (checkpoint `checkpoint`) in stop-and-wait steps
/// (`Relay::run_once`) until the table is drained; returns what it
/// published and how long it took.
async fn relay_stop_and_wait(
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

/// User + system CPU time of this process so far (`/proc/self/stat`,
/// clock ticks of 10 ms), or `None` where it is not readable.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
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
