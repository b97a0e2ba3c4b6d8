//! The analysts' contract (issue 18): the committed schemas under
//! `schemas/` equal the ones generated from the event types (so an event
//! changed without a new version fails here), every aggregate type has its
//! schemas, and the FULL_TRANSITIVE rule between versions holds.
//!
//! After an intended change (with a new event version), regenerate:
//! `STREAMFORGE_WRITE_SCHEMAS=1 cargo test -p domain --test schemas`.

use std::path::PathBuf;

use domain::schema::{asyncapi_yaml, event_schemas, events_markdown, full_transitive_compatible};
use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn committed_schemas_equal_the_generated_ones() {
    let schemas = event_schemas();
    let write = std::env::var_os("STREAMFORGE_WRITE_SCHEMAS").is_some();
    let mut differ = Vec::new();
    for s in &schemas {
        let path = root().join(s.path());
        let text = serde_json::to_string_pretty(&s.schema).unwrap() + "\n";
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(committed) if committed == text => {}
            _ => differ.push(s.path()),
        }
    }
    assert!(
        differ.is_empty(),
        "these event schemas differ from schemas/ (a changed event needs a new version): {differ:?}"
    );
    // Every aggregate type has schemas; every schema is closed.
    for t in domain::envelope::AGGREGATE_TYPES {
        assert!(schemas.iter().any(|s| s.aggregate_type == *t), "no schema for {t}");
    }
    for s in &schemas {
        assert_eq!(s.schema["additionalProperties"], false, "{} is not closed", s.path());
    }
    // No committed schema without an event type (a removed type keeps its
    // files only under a new name).
    let dir = root().join("schemas");
    for aggregate in std::fs::read_dir(&dir).unwrap() {
        let aggregate = aggregate.unwrap().path();
        if !aggregate.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&aggregate).unwrap() {
            let name = file.unwrap().file_name().into_string().unwrap();
            let rel = format!("schemas/{}/{name}", aggregate.file_name().unwrap().to_string_lossy());
            assert!(schemas.iter().any(|s| s.path() == rel), "{rel} has no event type");
        }
    }
}

#[test]
fn docs_events_md_is_generated_from_the_schemas() {
    let path = root().join("docs/events.md");
    let generated = events_markdown();
    if std::env::var_os("STREAMFORGE_WRITE_SCHEMAS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(committed == generated, "docs/events.md differs from the schemas: regenerate it");
    for s in event_schemas() {
        assert!(committed.contains(&format!("### `{}` (v{})", s.event_type, s.version)), "{}", s.event_type);
    }
}

#[test]
fn the_asyncapi_document_is_generated_and_names_every_topic_and_message() {
    let path = root().join("schemas/asyncapi.yaml");
    let generated = asyncapi_yaml();
    if std::env::var_os("STREAMFORGE_WRITE_SCHEMAS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(committed == generated, "schemas/asyncapi.yaml differs: regenerate it");
    for t in domain::envelope::AGGREGATE_TYPES {
        assert!(committed.contains(&format!("address: streamforge.events.{t}\n")), "{t}");
    }
    for s in event_schemas() {
        let file = s.path().trim_start_matches("schemas/").to_owned();
        assert!(committed.contains(&format!("$ref: '{file}'")), "{file}");
        assert!(root().join("schemas").join(&file).exists(), "{file} referenced but absent");
    }
}

#[test]
fn full_transitive_allows_only_optional_fields_to_come_and_go() {
    let v1 = json!({"required": ["a"], "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}});
    let optional_added = json!({"required": ["a"], "properties": {"a": {"type": "string"}, "b": {"type": "integer"},
                                                                    "c": {"type": "string"}}});
    let optional_removed = json!({"required": ["a"], "properties": {"a": {"type": "string"}}});
    let required_added = json!({"required": ["a", "c"], "properties": {"a": {"type": "string"}, "c": {}}});
    let type_changed = json!({"required": ["a"], "properties": {"a": {"type": "integer"}}});
    assert!(full_transitive_compatible(&v1, &optional_added).is_ok());
    assert!(full_transitive_compatible(&v1, &optional_removed).is_ok());
    assert!(full_transitive_compatible(&v1, &required_added).is_err());
    assert!(full_transitive_compatible(&v1, &type_changed).is_err());
    // And between the committed versions of every event type.
    let schemas = event_schemas();
    for s in &schemas {
        let dir = root().join("schemas").join(s.aggregate_type);
        for v in 1..s.version.parse::<u32>().unwrap() {
            let old: Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join(format!("{}.v{v}.json", s.event_type))).unwrap(),
            )
            .unwrap();
            full_transitive_compatible(&old, &s.schema).unwrap_or_else(|e| panic!("{}: {e}", s.path()));
        }
    }
}
