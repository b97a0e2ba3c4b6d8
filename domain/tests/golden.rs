//! Golden events (upcasting): stored events of every version must still be
//! read. `tests/golden/<aggregate_type>/` keeps, for every event type of
//! the catalogue (`domain::schema::event_schemas`),
//!
//! - `<EventType>.v<N>.json`: one realistic payload of version `N`, exactly
//!   as postgres-es stores it (`events.payload`, serde's externally tagged
//!   form `{"<EventType>": {…}}`), for every version `N` from 1 to the
//!   current one. Written once and never changed: they are what the store
//!   holds. Each is read through `domain::upcast::upcast`, decoded into the
//!   aggregate's event enum, and (once upcast to the current version)
//!   re-serialised to the same JSON;
//! - `stream.json` (and optionally more `stream.<name>.json`): a stream of
//!   the aggregate in an order a real one takes,
//!   `{"events": [{"event_type", "event_version", "payload"}, …], "state": …}`,
//!   whose events, upcast and applied to `Aggregate::default()`, fold to
//!   exactly `state` (the aggregate as serde_json). Together the streams of
//!   an aggregate type hold every one of its event types.
//!
//! A new event type needs its `<EventType>.v1.json` (hand-written, or
//! `serde_json::to_string_pretty` of a real value) and a place in a stream.
//! After an intended change to an aggregate's state (never to a payload),
//! rewrite the `state` of the stream files only:
//! `STREAMFORGE_WRITE_GOLDEN=1 cargo test -p domain --test golden`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use cqrs_es::{Aggregate, DomainEvent};
use serde_json::{Map, Value};

use domain::access::grants::Grants;
use domain::access::role::Role;
use domain::catalog::track::Track;
use domain::moderation::Case;
use domain::otp::{OtpChallenge, OtpEvent};
use domain::passkey::Passkeys;
use domain::pin::DevicePin;
use domain::schema::{event_schemas, EventSchema};
use domain::session::Session;
use domain::social::comment::Comment;
use domain::social::engagement::Engagement;
use domain::social::inbox::Inbox;
use domain::social::relationship::Relationship;
use domain::throttle::Throttle;
use domain::totp::Totp;
use domain::upcast::{upcast, upcast_with, upcasters, VersionStep};
use domain::user::User;

const WRITE_ENV: &str = "STREAMFORGE_WRITE_GOLDEN";

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Calls `$f::<A>(args)` with `A` the aggregate of aggregate type `$t`.
macro_rules! with_aggregate {
    ($t:expr, $f:ident ( $($arg:expr),* )) => {
        match $t {
            "user" => $f::<User>($($arg),*),
            "otp_challenge" => $f::<OtpChallenge>($($arg),*),
            "session" => $f::<Session>($($arg),*),
            "throttle" => $f::<Throttle>($($arg),*),
            "passkeys" => $f::<Passkeys>($($arg),*),
            "totp" => $f::<Totp>($($arg),*),
            "device_pin" => $f::<DevicePin>($($arg),*),
            "relationship" => $f::<Relationship>($($arg),*),
            "track" => $f::<Track>($($arg),*),
            "engagement" => $f::<Engagement>($($arg),*),
            "comment" => $f::<Comment>($($arg),*),
            "inbox" => $f::<Inbox>($($arg),*),
            "role" => $f::<Role>($($arg),*),
            "access" => $f::<Grants>($($arg),*),
            "moderation" => $f::<Case>($($arg),*),
            other => panic!("aggregate type {other} is missing from golden.rs's with_aggregate!"),
        }
    };
}

/// What a payload decoded to: the event's type, version and re-serialised JSON.
struct Decoded {
    event_type: String,
    event_version: String,
    json: Value,
}

fn decode<A: Aggregate>(payload: &Value) -> Result<Decoded, String> {
    let event: A::Event = serde_json::from_value(payload.clone()).map_err(|e| e.to_string())?;
    let json = serde_json::to_value(&event).map_err(|e| e.to_string())?;
    Ok(Decoded { event_type: event.event_type(), event_version: event.event_version(), json })
}

fn aggregate_type_of<A: Aggregate>() -> &'static str {
    A::TYPE
}

/// Upcasts (with `upcasters`), decodes and applies `events` (each
/// `{event_type, event_version, payload}`) to `A::default()`; returns the
/// state as JSON, and whether the stored `state` decodes back to the same
/// aggregate (as a snapshot would).
fn fold<A: Aggregate + PartialEq + Debug>(
    upcasters: &[Box<dyn EventUpcaster>],
    events: &[Value],
    stored_state: &Value,
) -> Result<(Value, bool), String> {
    let mut state = A::default();
    for (i, e) in events.iter().enumerate() {
        let event_type = e["event_type"].as_str().ok_or(format!("event {i}: no event_type"))?;
        let event_version = e["event_version"].as_str().ok_or(format!("event {i}: no event_version"))?;
        let (_, payload) = upcast_with(upcasters, event_type, event_version, e["payload"].clone());
        let event: A::Event = serde_json::from_value(payload)
            .map_err(|err| format!("event {i} ({event_type} v{event_version}): {err}"))?;
        if event.event_type() != event_type {
            return Err(format!("event {i}: labelled {event_type}, decodes as {}", event.event_type()));
        }
        state.apply(event);
    }
    let json = serde_json::to_value(&state).map_err(|e| e.to_string())?;
    let snapshot_ok = serde_json::from_value::<A>(stored_state.clone()).is_ok_and(|s| s == state);
    Ok((json, snapshot_ok))
}

/// The catalogue: aggregate type → its event types' current schemas.
fn catalogue() -> BTreeMap<&'static str, Vec<EventSchema>> {
    let mut by_type: BTreeMap<&'static str, Vec<EventSchema>> = BTreeMap::new();
    for s in event_schemas() {
        by_type.entry(s.aggregate_type).or_default().push(s);
    }
    by_type
}

fn version_number(v: &str) -> u32 {
    v.parse().unwrap_or_else(|_| panic!("event version {v} is not a whole number"))
}

/// The schema's top-level property names and required names.
fn fields_of(schema: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let props = schema["properties"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default();
    let required = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    (props, required)
}

#[test]
fn the_catalogue_is_the_aggregates_and_has_80_event_types() {
    let catalogue = catalogue();
    let types: Vec<&str> = catalogue.keys().copied().collect();
    let mut expected: Vec<&str> = domain::envelope::AGGREGATE_TYPES.to_vec();
    expected.sort_unstable();
    assert_eq!(types, expected);
    for t in domain::envelope::AGGREGATE_TYPES {
        assert_eq!(
            with_aggregate!(*t, aggregate_type_of()),
            *t,
            "with_aggregate! maps {t} to another aggregate"
        );
    }
    assert_eq!(
        catalogue.values().map(Vec::len).sum::<usize>(),
        80,
        "event types added or removed: update this count"
    );
}

/// Every event type has a golden payload of every version up to the
/// current one; each decodes through the upcasters into the current
/// event, and the current version round-trips.
#[test]
fn every_golden_payload_decodes_through_the_upcasters() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for (aggregate_type, schemas) in catalogue() {
        for s in &schemas {
            let current = s.version;
            for v in 1..=version_number(current) {
                let rel = format!("{aggregate_type}/{}.v{v}.json", s.event_type);
                let path = golden_dir().join(&rel);
                if !path.exists() {
                    problems.push(format!(
                        "{rel}: missing (every event type keeps a golden payload per version)"
                    ));
                    continue;
                }
                checked += 1;
                let stored = read_json(&path);
                let inner = match stored.as_object() {
                    Some(m) if m.len() == 1 && m.contains_key(&s.event_type) => m[&s.event_type].clone(),
                    _ => {
                        problems.push(format!("{rel}: not the stored form {{\"{}\": {{…}}}}", s.event_type));
                        continue;
                    }
                };
                let (version, payload) = upcast(&s.event_type, &v.to_string(), stored.clone());
                if v.to_string() == current && (version != current || payload != stored) {
                    problems.push(format!("{rel}: an upcaster changed a payload of the current version"));
                }
                let decoded = match with_aggregate!(aggregate_type, decode(&payload)) {
                    Ok(d) => d,
                    Err(e) => {
                        problems.push(format!("{rel}: does not decode after upcasting (v{version}): {e}"));
                        continue;
                    }
                };
                if decoded.event_type != s.event_type {
                    problems.push(format!("{rel}: decodes as {}", decoded.event_type));
                }
                if decoded.event_version != current {
                    problems.push(format!(
                        "{rel}: the enum writes v{} but the catalogue says v{current}",
                        decoded.event_version
                    ));
                }
                if version == current && decoded.json != payload {
                    problems.push(format!(
                        "{rel}: does not round-trip:\n  stored   {payload}\n  re-encoded {}",
                        decoded.json
                    ));
                }
                // The golden payload of the current version is a full
                // instance of its schema: every field present (optional
                // ones too, so decoding each is tested), none unknown.
                if v.to_string() == current {
                    let (props, required) = fields_of(&s.schema);
                    let keys: BTreeSet<String> =
                        inner.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
                    let unknown: Vec<_> = keys.difference(&props).collect();
                    let absent: Vec<_> = props.difference(&keys).collect();
                    if !unknown.is_empty() {
                        problems.push(format!("{rel}: fields not in the schema: {unknown:?}"));
                    }
                    if !absent.is_empty() {
                        problems.push(format!(
                            "{rel}: schema fields absent (golden payloads hold all): {absent:?}"
                        ));
                    }
                    if !required.is_subset(&keys) {
                        problems.push(format!("{rel}: required fields absent"));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    assert!(checked >= 80, "only {checked} golden payloads checked");
}

/// Nothing under `golden/` that the catalogue does not explain.
#[test]
fn every_golden_file_belongs_to_an_event_type() {
    let catalogue = catalogue();
    for dir in std::fs::read_dir(golden_dir()).unwrap() {
        let dir = dir.unwrap().path();
        let aggregate_type = dir.file_name().unwrap().to_string_lossy().into_owned();
        let schemas = catalogue
            .get(aggregate_type.as_str())
            .unwrap_or_else(|| panic!("golden/{aggregate_type} is not an aggregate type"));
        for file in std::fs::read_dir(&dir).unwrap() {
            let name = file.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with("stream.") {
                continue;
            }
            let known = schemas.iter().any(|s| {
                (1..=version_number(s.version)).any(|v| name == format!("{}.v{v}.json", s.event_type))
            });
            assert!(
                known,
                "golden/{aggregate_type}/{name} names no event type and version of {aggregate_type}"
            );
        }
    }
}

fn stream_files(aggregate_type: &str) -> Vec<PathBuf> {
    let dir = golden_dir().join(aggregate_type);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|f| f.ok().map(|f| f.path()))
                .filter(|p| {
                    let n = p.file_name().unwrap_or_default().to_string_lossy();
                    n == "stream.json" || (n.starts_with("stream.") && n.ends_with(".json"))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Every aggregate type's golden streams fold to their stored state, and
/// cover its event types.
#[test]
fn golden_streams_fold_to_their_stored_state() {
    let write = std::env::var_os(WRITE_ENV).is_some();
    let upcasters = upcasters();
    let mut problems = Vec::new();
    for (aggregate_type, schemas) in catalogue() {
        let files = stream_files(aggregate_type);
        if !files.iter().any(|f| f.ends_with("stream.json")) {
            problems.push(format!("{aggregate_type}/stream.json: missing"));
        }
        let mut seen = BTreeSet::new();
        for path in files {
            let rel = format!("{aggregate_type}/{}", path.file_name().unwrap().to_string_lossy());
            let mut file = read_json(&path);
            let events = file["events"].as_array().cloned().unwrap_or_default();
            if events.is_empty() {
                problems.push(format!("{rel}: no events"));
                continue;
            }
            for e in &events {
                let t = e["event_type"].as_str().unwrap_or_default();
                if !schemas.iter().any(|s| s.event_type == t) {
                    problems.push(format!("{rel}: {t} is not an event type of {aggregate_type}"));
                }
                seen.insert(t.to_owned());
            }
            let stored_state = file["state"].clone();
            match with_aggregate!(aggregate_type, fold(&upcasters, &events, &stored_state)) {
                Err(e) => problems.push(format!("{rel}: {e}")),
                Ok((state, _)) if write => {
                    // Only the state; written aside and renamed, so the
                    // tests running alongside never read half a file.
                    file["state"] = state;
                    let tmp = path.with_extension("json.tmp");
                    std::fs::write(&tmp, serde_json::to_string_pretty(&file).unwrap() + "\n").unwrap();
                    std::fs::rename(&tmp, &path).unwrap();
                }
                Ok((state, snapshot_ok)) => {
                    if state != stored_state {
                        problems.push(format!(
                            "{rel}: folds to another state (after an intended change: {WRITE_ENV}=1):\n  stored {stored_state}\n  folded {state}"
                        ));
                    } else if !snapshot_ok {
                        problems
                            .push(format!("{rel}: the stored state does not decode back to the aggregate"));
                    }
                }
            }
        }
        let missing: Vec<_> =
            schemas.iter().filter(|s| !seen.contains(&s.event_type)).map(|s| &s.event_type).collect();
        if !missing.is_empty() {
            problems.push(format!("{aggregate_type}: no golden stream holds {missing:?}"));
        }
    }
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}

// ---- The upcast machinery, with upcasters made up for the test (no event
// type has a version 2 yet, so the registry is empty).

/// A test-only upcaster written against cqrs-es's trait directly: renames
/// field `old` to `new` inside the tag and sets the version.
struct RenameField {
    event_type: &'static str,
    from: &'static str,
    to: &'static str,
    old: &'static str,
    new: &'static str,
}

impl EventUpcaster for RenameField {
    fn can_upcast(&self, event_type: &str, event_version: &str) -> bool {
        event_type == self.event_type && event_version == self.from
    }

    fn upcast(&self, mut event: SerializedEvent) -> SerializedEvent {
        if let Some(Value::Object(fields)) = event.payload.get_mut(self.event_type) {
            if let Some(v) = fields.remove(self.old) {
                fields.insert(self.new.to_owned(), v);
            }
        }
        event.event_version = self.to.to_owned();
        event
    }
}

/// A made-up history of `OtpVerificationFailed`: v0 stored the count as a
/// string named `attempts`; "0" → "0.9" parses it (a [`VersionStep`]),
/// "0.9" → "1" renames it to `failed_attempts` ([`RenameField`]).
fn made_up_chain() -> Vec<Box<dyn EventUpcaster>> {
    vec![
        Box::new(VersionStep {
            event_type: "OtpVerificationFailed",
            from: "0",
            to: "0.9",
            upcast: |mut fields| {
                let n = fields.get("attempts").and_then(Value::as_str).and_then(|s| s.parse::<u32>().ok());
                if let Some(n) = n {
                    fields.insert("attempts".to_owned(), Value::from(n));
                }
                fields
            },
        }),
        Box::new(RenameField {
            event_type: "OtpVerificationFailed",
            from: "0.9",
            to: "1",
            old: "attempts",
            new: "failed_attempts",
        }),
    ]
}

/// The v0 shape of a v1 `OtpVerificationFailed` payload.
fn to_v0(v1: &Value) -> Value {
    let mut fields = v1["OtpVerificationFailed"].as_object().cloned().unwrap();
    let n = fields.remove("failed_attempts").unwrap();
    fields.insert("attempts".to_owned(), Value::String(n.to_string()));
    let mut tagged = Map::new();
    tagged.insert("OtpVerificationFailed".to_owned(), Value::Object(fields));
    Value::Object(tagged)
}

#[test]
fn a_made_up_v0_payload_is_upcast_into_the_real_v1_event() {
    let v1 = read_json(&golden_dir().join("otp_challenge/OtpVerificationFailed.v1.json"));
    let v0 = to_v0(&v1);
    assert_ne!(v0, v1);
    assert!(serde_json::from_value::<OtpEvent>(v0.clone()).is_err(), "v0 must not decode as it is");

    let chain = made_up_chain();
    let (version, payload) = upcast_with(&chain, "OtpVerificationFailed", "0", v0.clone());
    assert_eq!(version, "1");
    assert_eq!(payload, v1);
    let event: OtpEvent = serde_json::from_value(payload).unwrap();
    assert_eq!(event, serde_json::from_value::<OtpEvent>(v1.clone()).unwrap());

    // Current payloads and other types pass untouched.
    assert_eq!(upcast_with(&chain, "OtpVerificationFailed", "1", v1.clone()), ("1".to_owned(), v1.clone()));
    assert_eq!(upcast_with(&chain, "OtpVerified", "0", v0.clone()), ("0".to_owned(), v0.clone()));

    // One pass in list order, as cqrs-es applies them: listed backwards,
    // only the first step runs and the payload stays undecodable.
    let backwards: Vec<Box<dyn EventUpcaster>> = made_up_chain().into_iter().rev().collect();
    let (version, payload) = upcast_with(&backwards, "OtpVerificationFailed", "0", v0);
    assert_eq!(version, "0.9");
    assert!(serde_json::from_value::<OtpEvent>(payload).is_err());
}

#[test]
fn a_stream_holding_made_up_v0_events_folds_to_the_same_state() {
    let path = golden_dir().join("otp_challenge/stream.locked.json");
    let file = read_json(&path);
    let events: Vec<Value> = file["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let mut e = e.clone();
            if e["event_type"] == "OtpVerificationFailed" {
                e["payload"] = to_v0(&e["payload"]);
                e["event_version"] = Value::from("0");
            }
            e
        })
        .collect();
    assert!(events.iter().any(|e| e["event_version"] == "0"));
    let v1_events = file["events"].as_array().unwrap();
    let (v1_state, _) = fold::<OtpChallenge>(&[], v1_events, &Value::Null).unwrap();
    let (state, _) = fold::<OtpChallenge>(&made_up_chain(), &events, &Value::Null).unwrap();
    assert_eq!(state, v1_state);
    assert_eq!(state["failed_attempts"], 3);
    assert!(fold::<OtpChallenge>(&[], &events, &Value::Null).is_err(), "without the upcasters v0 fails");
}
