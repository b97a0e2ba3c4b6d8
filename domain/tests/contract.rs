//! The Kafka contract (docs/envelope.md) names every event type the domain
//! can emit, and every aggregate type has a topic: the document cannot fall
//! behind the code unnoticed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

fn event_types_in_source() -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut names = Vec::new();
    let mut stack = vec![src];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // The `event_type()` arms: `Self::Name { .. } => "Name",`
            let Some(start) = text.find("fn event_type(&self) -> String") else { continue };
            let body = &text[start..text[start..].find(".to_owned()").map_or(text.len(), |e| start + e)];
            for line in body.lines() {
                if let Some((_, rest)) = line.split_once("=> \"") {
                    names.push(rest.split('"').next().unwrap().to_owned());
                }
            }
        }
    }
    names.sort();
    names
}

#[test]
fn every_event_type_is_documented_in_the_contract() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/envelope.md")).unwrap();
    let names = event_types_in_source();
    assert!(names.len() >= 40, "found only {} event types", names.len());
    let missing: Vec<&String> = names.iter().filter(|n| !doc.contains(&format!("| `{n}` |"))).collect();
    assert!(missing.is_empty(), "docs/envelope.md lacks event types: {missing:?}");
}

#[test]
fn every_aggregate_type_is_documented() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/envelope.md")).unwrap();
    for t in domain::envelope::AGGREGATE_TYPES {
        assert!(doc.contains(&format!("`…{t}`")), "docs/envelope.md lacks aggregate type {t}");
    }
}

#[test]
fn the_envelope_serialises_with_the_documented_fields() {
    let env = domain::envelope::Envelope::from_stored(
        uuid::Uuid::nil(),
        "user".into(),
        "u1".into(),
        1,
        7,
        "EmailVerified".into(),
        "1".into(),
        chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        serde_json::json!({"EmailVerified": {"challenge_id": "c", "verified_at": "t"}}),
        serde_json::json!({"request_id": "r"}),
    );
    let v = serde_json::to_value(&env).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "aggregate_id",
            "aggregate_type",
            "event_id",
            "event_type",
            "event_version",
            "metadata",
            "occurred_at",
            "payload",
            "position",
            "sequence"
        ]
    );
    assert_eq!(
        v["payload"],
        serde_json::json!({"challenge_id": "c", "verified_at": "t"}),
        "payload unwrapped from its tag"
    );
    assert_eq!(domain::envelope::ENVELOPE_SCHEMA_VERSION, "1");
}

/// Every aggregate's `TYPE` in the source has a topic (`AGGREGATE_TYPES`):
/// one left out is never created on the broker, so its events reach no
/// Kafka consumer (found the hard way in issue 16).
#[test]
fn every_aggregate_type_in_the_source_has_a_topic() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src];
    let mut found = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for line in text.lines() {
                if let Some(rest) = line.trim().strip_prefix("const TYPE: &'static str = \"") {
                    found.push(rest.split('"').next().unwrap().to_owned());
                }
            }
        }
    }
    assert!(found.len() >= 11, "found only {found:?}");
    for t in &found {
        assert!(domain::envelope::AGGREGATE_TYPES.contains(&t.as_str()), "aggregate type {t} has no topic");
    }
}
