//! JSON Schemas of the event types (issue 18, the analysts' contract): one
//! closed schema (`additionalProperties: false` on every object) per event
//! type and version, generated from the Rust types with `schemars`, so a
//! change to an event's fields changes its schema. The committed copies
//! live under `schemas/<aggregate_type>/<EventType>.v<version>.json`; the
//! test `domain/tests/schemas.rs` fails when the generated and committed
//! schemas differ (a changed event needs a new version) and checks new
//! versions against the old with [`full_transitive_compatible`].

use schemars::JsonSchema;
use serde_json::{json, Map, Value};

use crate::access::grants::GrantsEvent;
use crate::access::role::RoleEvent;
use crate::catalog::track::TrackEvent;
use crate::identity::otp::OtpEvent;
use crate::identity::passkey::PasskeyEvent;
use crate::identity::pin::PinEvent;
use crate::identity::session::SessionEvent;
use crate::identity::throttle::ThrottleEvent;
use crate::identity::totp::TotpEvent;
use crate::identity::user::UserEvent;
use crate::moderation::CaseEvent;
use crate::social::comment::CommentEvent;
use crate::social::engagement::EngagementEvent;
use crate::social::inbox::InboxEvent;
use crate::social::relationship::RelationshipEvent;

/// One event type's schema at one version.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSchema {
    pub aggregate_type: &'static str,
    pub event_type: String,
    pub version: &'static str,
    /// A JSON Schema (draft 2020-12) of the event's payload fields.
    pub schema: Value,
}

impl EventSchema {
    /// `schemas/<aggregate_type>/<EventType>.v<version>.json`, relative to the workspace.
    pub fn path(&self) -> String {
        format!("schemas/{}/{}.v{}.json", self.aggregate_type, self.event_type, self.version)
    }
}

/// Every event type's current schema (every event is at version 1 today).
pub fn event_schemas() -> Vec<EventSchema> {
    let mut out = Vec::new();
    add::<UserEvent>(&mut out, "user");
    add::<OtpEvent>(&mut out, "otp_challenge");
    add::<SessionEvent>(&mut out, "session");
    add::<ThrottleEvent>(&mut out, "throttle");
    add::<PasskeyEvent>(&mut out, "passkeys");
    add::<TotpEvent>(&mut out, "totp");
    add::<PinEvent>(&mut out, "device_pin");
    add::<RelationshipEvent>(&mut out, "relationship");
    add::<TrackEvent>(&mut out, "track");
    add::<EngagementEvent>(&mut out, "engagement");
    add::<CommentEvent>(&mut out, "comment");
    add::<InboxEvent>(&mut out, "inbox");
    add::<RoleEvent>(&mut out, "role");
    add::<GrantsEvent>(&mut out, "access");
    add::<CaseEvent>(&mut out, "moderation");
    out
}

/// Splits the enum's schema (externally tagged: one object per variant)
/// into one schema per variant.
fn add<E: JsonSchema>(out: &mut Vec<EventSchema>, aggregate_type: &'static str) {
    let root = serde_json::to_value(schemars::schema_for!(E)).unwrap_or(Value::Null);
    let defs = root.get("$defs").cloned();
    let variants = root.get("oneOf").and_then(Value::as_array).cloned().unwrap_or_default();
    for variant in variants {
        let Some((name, inner)) =
            variant.get("properties").and_then(Value::as_object).and_then(|p| p.iter().next())
        else {
            continue;
        };
        let mut schema = Map::new();
        schema.insert("$schema".to_owned(), json!("https://json-schema.org/draft/2020-12/schema"));
        schema.insert("title".to_owned(), json!(name));
        if let Some(d) = variant.get("description") {
            schema.insert("description".to_owned(), d.clone());
        }
        if let Value::Object(fields) = inner {
            for (k, v) in fields {
                schema.insert(k.clone(), v.clone());
            }
        }
        if let Some(defs) = &defs {
            let used = referenced(&Value::Object(schema.clone()), defs);
            if !used.is_empty() {
                schema.insert("$defs".to_owned(), Value::Object(used));
            }
        }
        let mut schema = Value::Object(schema);
        close(&mut schema);
        out.push(EventSchema { aggregate_type, event_type: name.clone(), version: "1", schema });
    }
}

/// The definitions `value` refers to, transitively.
fn referenced(value: &Value, defs: &Value) -> Map<String, Value> {
    let mut found = Map::new();
    let mut stack = vec![value.clone()];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    if let Some(name) = r.strip_prefix("#/$defs/") {
                        if !found.contains_key(name) {
                            if let Some(d) = defs.get(name) {
                                found.insert(name.to_owned(), d.clone());
                                stack.push(d.clone());
                            }
                        }
                    }
                }
                stack.extend(m.into_iter().map(|(_, v)| v));
            }
            Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    found
}

/// Sets `additionalProperties: false` on every object schema that lists
/// its properties and says nothing about others.
fn close(value: &mut Value) {
    match value {
        Value::Object(m) => {
            if m.contains_key("properties") && !m.contains_key("additionalProperties") {
                m.insert("additionalProperties".to_owned(), Value::Bool(false));
            }
            for v in m.values_mut() {
                close(v);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(close),
        _ => {}
    }
}

/// Confluent's FULL_TRANSITIVE rule for two versions of an event type's
/// schema: only optional fields may be added or removed — the required
/// fields are the same, and every field both have keeps its schema.
/// Returns the first difference that breaks it.
pub fn full_transitive_compatible(old: &Value, new: &Value) -> Result<(), String> {
    let required = |s: &Value| -> Vec<String> {
        let mut r: Vec<String> = s
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        r.sort();
        r
    };
    if required(old) != required(new) {
        return Err(format!("required fields changed: {:?} → {:?}", required(old), required(new)));
    }
    let empty = Map::new();
    let props =
        |s: &Value| s.get("properties").and_then(Value::as_object).cloned().unwrap_or_else(|| empty.clone());
    let (old_p, new_p) = (props(old), props(new));
    for (name, schema) in &old_p {
        if let Some(other) = new_p.get(name) {
            if other != schema {
                return Err(format!("field {name} changed its schema"));
            }
        }
    }
    Ok(())
}

/// `docs/events.md`: every event type's fields from its schema (type,
/// required or not, the field's doc comment), by aggregate type (topic).
/// Generated; `domain/tests/schemas.rs` checks the committed file.
pub fn events_markdown() -> String {
    let mut out = String::from(
        "# Event types (generated)\n\n\
         Generated from the event types' JSON Schemas (`schemas/`, `domain::schema`); do not edit by hand.\n\
         Regenerate: `STREAMFORGE_WRITE_SCHEMAS=1 cargo test -p domain --test schemas`. The envelope, keys,\n\
         headers and what each field means for privacy: [envelope.md](envelope.md).\n",
    );
    let schemas = event_schemas();
    for aggregate_type in crate::envelope::AGGREGATE_TYPES {
        out.push_str(&format!("\n## `{aggregate_type}` (topic `streamforge.events.{aggregate_type}`)\n"));
        for s in schemas.iter().filter(|s| s.aggregate_type == *aggregate_type) {
            out.push_str(&format!("\n### `{}` (v{}) — `{}`\n\n", s.event_type, s.version, s.path()));
            if let Some(d) = s.schema.get("description").and_then(Value::as_str) {
                out.push_str(&one_line(d));
                out.push_str("\n\n");
            }
            out.push_str("| field | type | required | meaning |\n|---|---|---|---|\n");
            let required: Vec<&str> = s
                .schema
                .get("required")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(props) = s.schema.get("properties").and_then(Value::as_object) {
                for (name, p) in props {
                    let meaning =
                        p.get("description").and_then(Value::as_str).map(one_line).unwrap_or_default();
                    let req = if required.contains(&name.as_str()) { "yes" } else { "no" };
                    out.push_str(&format!("| `{name}` | {} | {req} | {meaning} |\n", type_of(p)));
                }
            }
        }
    }
    out
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|")
}

/// A short rendering of a property's type.
fn type_of(p: &Value) -> String {
    if let Some(r) = p.get("$ref").and_then(Value::as_str) {
        return format!("`{}`", r.trim_start_matches("#/$defs/"));
    }
    if let Some(any) = p.get("anyOf").or_else(|| p.get("oneOf")).and_then(Value::as_array) {
        let parts: Vec<String> = any.iter().map(type_of).collect();
        return parts.join(" or ");
    }
    if let Some(c) = p.get("const") {
        return format!("`{c}`");
    }
    let base = match p.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" or "),
        _ => "any".to_owned(),
    };
    match (p.get("items"), p.get("format").and_then(Value::as_str)) {
        (Some(items), _) => format!("{base} of {}", type_of(items)),
        (None, Some(f)) => format!("{base} ({f})"),
        (None, None) => base,
    }
}

/// `schemas/asyncapi.yaml`: an AsyncAPI 3 document of the topics — one
/// channel per aggregate type (`streamforge.events.<type>`), its messages
/// (one per event type, payload = the envelope, whose `payload` field is
/// the event's schema file), the Kafka bindings (key = aggregate id,
/// headers, partitions). Generated; checked by `domain/tests/schemas.rs`.
pub fn asyncapi_yaml() -> String {
    let schemas = event_schemas();
    let mut y = String::new();
    y.push_str("# Generated from the event types (domain::schema::asyncapi_yaml); do not edit by hand.\n");
    y.push_str("asyncapi: 3.0.0\ninfo:\n  title: streamforge events\n  version: '1'\n");
    y.push_str("  description: Every change is an event on the topic of its aggregate type, keyed by aggregate id, as a versioned JSON envelope (docs/envelope.md).\n");
    y.push_str("defaultContentType: application/json\nchannels:\n");
    for t in crate::envelope::AGGREGATE_TYPES {
        y.push_str(&format!("  {t}:\n    address: streamforge.events.{t}\n    messages:\n"));
        for s in schemas.iter().filter(|s| s.aggregate_type == *t) {
            y.push_str(&format!(
                "      {}:\n        $ref: '#/components/messages/{}'\n",
                s.event_type, s.event_type
            ));
        }
        y.push_str("    bindings:\n      kafka:\n        topic: streamforge.events.");
        y.push_str(t);
        y.push_str("\n        partitions: 6\n        bindingVersion: 0.5.0\n");
    }
    y.push_str("operations:\n");
    for t in crate::envelope::AGGREGATE_TYPES {
        y.push_str(&format!(
            "  consume_{t}:\n    action: receive\n    channel:\n      $ref: '#/channels/{t}'\n"
        ));
    }
    y.push_str("components:\n  messages:\n");
    for s in &schemas {
        y.push_str(&format!(
            "    {name}:\n      name: {name}\n      headers:\n        type: object\n        properties:\n          \
             event-type:\n            const: {name}\n          event-version:\n            const: '{v}'\n          \
             envelope-version:\n            const: '1'\n      payload:\n        type: object\n        required: \
             [event_id, aggregate_type, aggregate_id, sequence, position, event_type, event_version, occurred_at, \
             payload, metadata]\n        properties:\n          aggregate_type:\n            const: {t}\n          \
             event_type:\n            const: {name}\n          event_version:\n            const: '{v}'\n          \
             payload:\n            $ref: '{file}'\n          subject:\n            type: string\n            \
             pattern: '^[0-9a-f]{{64}}$'\n            description: pseudonymous id of the user the event concerns \
             (HMAC-SHA256 under the key subject_key; absent when it concerns no user)\n          subject_key:\n            \
             type: string\n            description: id of the key that made subject\n      bindings:\n        kafka:\n          key:\n            \
             type: string\n            description: the aggregate id\n          bindingVersion: 0.5.0\n",
            name = s.event_type,
            v = s.version,
            t = s.aggregate_type,
            file = s.path().trim_start_matches("schemas/"),
        ));
    }
    y
}
