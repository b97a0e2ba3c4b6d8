//! A consumer group must keep consuming across broker restarts — also when a
//! member process died without leaving (SIGKILL) just before. Runs its own tansu
//! broker with durable storage (`sqlite://`, tansu's `libsql` feature) on a
//! free loopback port, so a restart keeps the topics and the committed
//! offsets, as Kafka does. The tansu binary is `TANSU_BIN`, else `tansu` on
//! `PATH`, else `~/.cargo/bin/tansu` (scripts/test installs it with both
//! storage engines).

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use projections::feed::EventFeed;
use projections::kafka_feed::{KafkaFeed, KafkaFeedConfig};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::time::Instant;

use crate::kafka_feed::envelope;

/// How long a group may take to deliver after a restart: the feed's stall
/// timeout (here 3 s) twice, the session timeout, and margin for a slow
/// machine. Without the watchdog and the shorter metadata refresh this took
/// minutes (docs/performance.md, "Fault tests").
const RECOVERY_LIMIT: Duration = Duration::from_secs(45);

fn tansu_bin() -> PathBuf {
    if let Ok(path) = std::env::var("TANSU_BIN") {
        return PathBuf::from(path);
    }
    if let Some(path) = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("tansu")).find(|p| p.is_file()))
    {
        return path;
    }
    PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/tansu")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A tansu broker with sqlite storage in a temporary directory; dropping
/// it kills the broker and removes the directory.
struct Broker {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Broker {
    async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("sf-tansu-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut broker = Self { dir, port: free_port(), child: None };
        broker.spawn().await;
        broker
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let url = format!("tcp://{}", self.address());
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("tansu.log")).unwrap();
        // tansu reads the path of a sqlite:// URL relative to its working directory.
        let child = Command::new(tansu_bin())
            .current_dir(&self.dir)
            .args(["broker", "--storage-engine", "sqlite://tansu.db", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start tansu ({}): {e}", tansu_bin().display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(self.address()).await.is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen within 30 s: {}", self.log_tail());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// kill -9, then start again on the same port and storage.
    async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &options)
        .await
        .unwrap();
    for result in results {
        result.unwrap();
    }
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "60000")
        .set("reconnect.backoff.max.ms", "1000")
        .create()
        .unwrap()
}

/// Publishes `count` envelopes on `keys` streams starting at `first`;
/// returns their "stream#sequence" ids.
async fn publish(producer: &FutureProducer, topic: &str, first: i64, count: i64) -> HashSet<String> {
    let mut sent = HashSet::new();
    for sequence in first..first + count {
        let id = format!("s{}", sequence % 7);
        let value = serde_json::to_vec(&envelope(&id, sequence)).unwrap();
        producer
            .send(FutureRecord::to(topic).key(&id).payload(&value), Duration::from_secs(60))
            .await
            .map_err(|(e, _)| e)
            .expect("delivered");
        sent.insert(format!("{id}#{sequence}"));
    }
    sent
}

/// Reads from `feed` (committing each batch) until every id of `expected`
/// arrived or `limit` passed; returns how long it took, or `None`.
async fn receive_all(feed: &mut KafkaFeed, expected: &HashSet<String>, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut missing = expected.clone();
    while !missing.is_empty() {
        if started.elapsed() > limit {
            return None;
        }
        let batch = feed.next_batch(500, Duration::from_millis(200)).await.expect("feed");
        for envelope in &batch {
            missing.remove(&format!("{}#{}", envelope.aggregate_id, envelope.sequence));
        }
        if !batch.is_empty() {
            feed.commit().await.expect("commit");
        }
    }
    Some(started.elapsed())
}

/// Shows the feed's warnings (watchdog, consumer errors) in the test output.
fn init_logs() {
    let _ = tracing_subscriber::fmt().with_env_filter("projections=info").with_test_writer().try_init();
}

fn feed_config(brokers: &str, group: &str, topic: &str) -> KafkaFeedConfig {
    let mut config = KafkaFeedConfig::new(brokers, group, [topic]);
    config.stall_timeout = Some(Duration::from_secs(3));
    // Experiments: SF_OLD_FEED=1 restores librdkafka's defaults and turns
    // the watchdog off (the stall then reproduces); =settings keeps the
    // watchdog; =metadata or =reconnect restore only that default (watchdog off).
    if let Ok(old) = std::env::var("SF_OLD_FEED") {
        if old != "settings" {
            config.stall_timeout = None;
        }
        if old != "reconnect" {
            config.extra.push(("topic.metadata.refresh.interval.ms".into(), "300000".into()));
        }
        if old != "metadata" {
            config.extra.push(("reconnect.backoff.max.ms".into(), "10000".into()));
        }
    }
    config
}

/// The topic both restart tests use, on their own broker.
const TOPIC: &str = "streamforge.events.test";

/// A fresh broker with [`TOPIC`] (3 partitions), a producer, and a feed of
/// `group` that has received the first `first` envelopes; `next` is the
/// sequence to publish next.
struct Group {
    broker: Broker,
    brokers: String,
    producer: FutureProducer,
    feed: KafkaFeed,
    next: i64,
}

impl Group {
    async fn start(group: &str, first: i64) -> Self {
        init_logs();
        let broker = Broker::start().await;
        let brokers = broker.address();
        create_topic(&brokers, TOPIC, 3).await;
        let producer = producer(&brokers);
        let mut feed = KafkaFeed::new(&feed_config(&brokers, group, TOPIC)).unwrap();
        let sent = publish(&producer, TOPIC, 0, first).await;
        assert!(
            receive_all(&mut feed, &sent, RECOVERY_LIMIT).await.is_some(),
            "before any restart: the group did not deliver"
        );
        Self { broker, brokers, producer, feed, next: first }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_keeps_consuming_across_broker_restarts() {
    let Group { mut broker, brokers, producer, mut feed, mut next } = Group::start("restart-group", 50).await;

    let mut timings = Vec::new();
    for round in 1..=3 {
        broker.restart().await;
        let sent = publish(&producer, TOPIC, next, 30).await;
        next += 30;
        let took = receive_all(&mut feed, &sent, RECOVERY_LIMIT).await;
        assert!(
            took.is_some(),
            "round {round}: the group received nothing within {RECOVERY_LIMIT:?} after the broker restart \
             (consumer replaced {} times; broker dir {}):\n{}",
            feed.replacements(),
            broker.path().display(),
            broker.log_tail()
        );
        timings.push(took.unwrap_or_default());
    }
    println!("delivery after each restart: {timings:?}, consumer replacements {}", feed.replacements());

    // Everything published before and after the restarts is still there for
    // a reader from the start (what `streamforge chaos verify` does).
    for start in [rdkafka::Offset::Beginning, rdkafka::Offset::Offset(0)] {
        let read = read_from(&brokers, TOPIC, start, next).await;
        assert_eq!(read, next as usize, "a reader from {start:?} saw {read} of {next} messages");
    }
}

/// Reads every partition of `topic` from `start` (assigned explicitly, no
/// group) until `expected` messages arrived or nothing came for 10 s.
async fn read_from(brokers: &str, topic: &str, start: rdkafka::Offset, expected: i64) -> usize {
    let consumer = projections::kafka_feed::assigned_reader(brokers, &[topic.to_owned()], start, 5).unwrap();
    let mut read = 0;
    while read < usize::try_from(expected).unwrap() {
        match tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await {
            Err(_) => break,
            Ok(Ok(_)) => read += 1,
            Ok(Err(_)) => {}
        }
    }
    read
}

/// Not a test of its own: the body of a group member run as a separate
/// process by [`a_consumer_group_keeps_consuming_when_a_member_process_dies_and_the_broker_restarts`],
/// so that it can be killed with SIGKILL. Without `SF_MEMBER_BROKERS` it
/// returns at once.
#[tokio::test]
#[ignore = "helper process of another test"]
async fn member_process() {
    let Ok(brokers) = std::env::var("SF_MEMBER_BROKERS") else { return };
    let group = std::env::var("SF_MEMBER_GROUP").unwrap();
    let topic = std::env::var("SF_MEMBER_TOPIC").unwrap();
    let mut feed = KafkaFeed::new(&feed_config(&brokers, &group, &topic)).unwrap();
    loop {
        if let Ok(batch) = feed.next_batch(500, Duration::from_millis(200)).await {
            if !batch.is_empty() {
                let _ = feed.commit().await;
            }
        }
    }
}

/// Starts [`member_process`] as a child process in `group`.
fn spawn_member(brokers: &str, group: &str, topic: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["broker_restart::member_process", "--exact", "--ignored", "--nocapture"])
        .env("SF_MEMBER_BROKERS", brokers)
        .env("SF_MEMBER_GROUP", group)
        .env("SF_MEMBER_TOPIC", topic)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// What scripts/chaos does to a projector: a member process of the group is
/// killed with SIGKILL (it never leaves the group), and while the group
/// still counts it the broker is killed and restarted; the surviving member
/// must go on receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_keeps_consuming_when_a_member_process_dies_and_the_broker_restarts() {
    let group = "member-death-group";
    let Group { mut broker, brokers, producer, mut feed, mut next } = Group::start(group, 30).await;

    let mut timings = Vec::new();
    for round in 1..=3 {
        // A second member joins (the group rebalances to two members)…
        let mut member = spawn_member(&brokers, group, TOPIC);
        let rebalance = Instant::now();
        while rebalance.elapsed() < Duration::from_secs(6) {
            let _ = feed.next_batch(100, Duration::from_millis(200)).await;
        }
        // …dies without leaving, and the broker restarts while the group
        // still counts the dead member (session timeout 10 s).
        member.kill().unwrap();
        member.wait().unwrap();
        broker.restart().await;
        let sent = publish(&producer, TOPIC, next, 30).await;
        next += 30;
        let took = receive_all(&mut feed, &sent, RECOVERY_LIMIT).await;
        assert!(
            took.is_some(),
            "round {round}: the surviving member did not receive within {RECOVERY_LIMIT:?} \
             (consumer replaced {} times; broker dir {}):\n{}",
            feed.replacements(),
            broker.path().display(),
            broker.log_tail()
        );
        timings.push(took.unwrap_or_default());
    }
    println!(
        "delivery after each member death + restart: {timings:?}, consumer replacements {}",
        feed.replacements()
    );
}

#[test]
fn the_watchdog_flags_only_lagging_partitions_whose_committed_offset_stands_still() {
    use std::collections::HashMap;

    use projections::kafka_feed::{stalled_partitions, PartitionProgress};

    let key = |p: i32| ("t".to_owned(), p);
    let progress = |committed: Option<i64>, low: i64, high: i64| PartitionProgress { committed, low, high };
    let now = HashMap::from([
        (key(0), progress(Some(10), 0, 10)), // caught up
        (key(1), progress(Some(4), 0, 10)),  // lags, moved since last check
        (key(2), progress(Some(7), 0, 10)),  // lags, stood still
        (key(3), progress(None, 2, 5)),      // never committed, data there
        (key(4), progress(Some(1), 3, 9)),   // committed below low: starts at low
    ]);
    let previous = HashMap::from([(key(1), 2), (key(2), 7), (key(3), 2), (key(4), 3)]);

    let (stalled, lagging) = stalled_partitions(&now, &previous, true);
    assert_eq!(stalled, vec![key(2), key(3), key(4)]);
    assert_eq!(lagging, HashMap::from([(key(1), 4), (key(2), 7), (key(3), 2), (key(4), 3)]));

    // With auto.offset.reset=latest a partition without commits is not judged.
    let (stalled, lagging) = stalled_partitions(&now, &previous, false);
    assert_eq!(stalled, vec![key(2), key(4)]);
    assert!(!lagging.contains_key(&key(3)));

    // A first check only records.
    let (stalled, _) = stalled_partitions(&now, &HashMap::new(), true);
    assert!(stalled.is_empty());
}
