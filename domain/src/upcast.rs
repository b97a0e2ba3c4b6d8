//! Upcasting: stored events of an older version are read through
//! upcasters, cqrs-es's [`EventUpcaster`] (`cqrs_es::persist`), before they
//! are decoded into an event enum, so the enums only ever know the current
//! version of each event type.
//!
//! # The rule (when an event type gets a new version)
//!
//! The events of the store are never rewritten. Every change to an event's
//! fields changes its schema (`schemas/<aggregate_type>/<EventType>.v<N>.json`,
//! checked by `domain/tests/schemas.rs`), so it is a new version of the
//! type. Whether it needs an upcaster is decided by Confluent Schema
//! Registry's FULL_TRANSITIVE compatibility
//! ([`crate::schema::full_transitive_compatible`]: only optional fields
//! may be added or removed; the required fields stay the same and every
//! field both versions have keeps its schema):
//!
//! - compatible with every earlier version: old payloads still decode
//!   (serde defaults fill the new optional fields); no upcaster is needed,
//!   a [`VersionStep`] with the identity may still lift the version label;
//! - not compatible (a field renamed, made required, retyped, split, …):
//!   the type gets a new version **and** an upcaster from the old one.
//!   (`domain/tests/schemas.rs` today requires every committed version to
//!   be FULL_TRANSITIVE compatible with the earlier ones; the first
//!   incompatible version must teach that check to accept a step bridged
//!   by an upcaster, which `domain/tests/golden.rs` then proves.)
//!
//! To add version `N+1` of `EventType`:
//!
//! 1. Change the variant and return `"N+1"` for it from its enum's
//!    `DomainEvent::event_version` (the version every newly written event of
//!    the type carries).
//! 2. Give the type version `N+1` in [`crate::schema::event_schemas`] and
//!    commit the new schema file `schemas/<aggregate_type>/<EventType>.v<N+1>.json`
//!    next to the old one (`STREAMFORGE_WRITE_SCHEMAS=1 cargo test -p domain
//!    --test schemas`); the old file stays, it describes stored events.
//! 3. Append a [`VersionStep`] `{ event_type, from: "N", to: "N+1", upcast }`
//!    to [`upcasters`], after any earlier step of the same type (steps run
//!    in list order, each on what the previous one produced, so `"1"→"2"`
//!    comes before `"2"→"3"`).
//! 4. Add the golden payload `domain/tests/golden/<aggregate_type>/<EventType>.v<N+1>.json`
//!    and leave `….v<N>.json` as it is: `domain/tests/golden.rs` reads every
//!    old golden payload through [`upcast`] and decodes it into the current
//!    enum, and folds the golden streams to the same state.
//!
//! # Shapes
//!
//! An upcaster sees the event as postgres-es stores it (the `events` row):
//! `event_type`, `event_version` (a string, `"1"` for every type today) and
//! `payload`, serde's externally tagged form of the enum variant:
//!
//! ```json
//! {"OtpVerified": {"verified_at": "2026-12-08T09:16:17.318402915Z"}}
//! ```
//!
//! [`VersionStep`] unwraps the tag for its function and wraps the result
//! again; a hand-written [`EventUpcaster`] gets the tagged payload as is.
//! Upcasters keep `event_type` (the tag and the row's column must agree for
//! the readers that re-tag an [`Envelope`]). cqrs-es's own
//! `SemanticVersionEventUpcaster` also works, but it labels the result
//! `"2.0.0"` rather than `"2"` and applies to *every* older version, so it
//! does not match our versions exactly; prefer [`VersionStep`].
//!
//! # Where upcasting happens
//!
//! - The write side loads aggregates through postgres-es:
//!   `PersistedEventStore::new_event_store(repo).with_upcasters(upcasters())`
//!   (cqrs-es applies them in `load_events`/`load_aggregate`); replays
//!   through `QueryReplay::with_upcasters(upcasters())`.
//! - Our own readers of the `events` table (projections, history,
//!   executor loads that bypass postgres-es) call [`upcast`] on the stored
//!   `(event_type, event_version, payload)` before `serde_json::from_value`,
//!   or [`upcast_envelope`] on an [`Envelope`].

use std::sync::OnceLock;

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use serde_json::{Map, Value};

use crate::envelope::Envelope;

/// The upcasters of every event type, in the order they are applied (each
/// type's steps oldest first; see the module docs for how to add one).
/// A new `Vec` each call, since cqrs-es takes ownership
/// (`PersistedEventStore::with_upcasters`, `QueryReplay::with_upcasters`).
///
/// Empty today: every event type is at version `"1"`, its first version.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    Vec::new()
}

/// Whether a stored `event_type` at `event_version` goes through an
/// upcaster (it is not at its current version): readers that decode the
/// stored text directly take their fast path only when this is `false`.
pub fn has_upcaster(event_type: &str, event_version: &str) -> bool {
    registry().iter().any(|u| u.can_upcast(event_type, event_version))
}

/// [`upcasters`], built once for [`upcast`] and [`upcast_envelope`].
fn registry() -> &'static [Box<dyn EventUpcaster>] {
    static REGISTRY: OnceLock<Vec<Box<dyn EventUpcaster>>> = OnceLock::new();
    REGISTRY.get_or_init(upcasters)
}

/// Runs a stored event through the registry ([`upcasters`]): `payload` is
/// the `events.payload` column (externally tagged, `{"<EventType>": {…}}`),
/// `event_version` the `events.event_version` column. Returns the version
/// and payload after every matching upcaster — the current version of the
/// type and a payload its enum decodes — or the input unchanged when no
/// upcaster matches (the event is current). Never fails: a payload an
/// upcaster cannot read is left as it is, and the decode reports it.
pub fn upcast(event_type: &str, event_version: &str, payload: Value) -> (String, Value) {
    upcast_with(registry(), event_type, event_version, payload)
}

/// [`upcast`] with the given upcasters instead of the registry (tests, or a
/// reader that holds its own list). Applies them as cqrs-es does: in list
/// order, each one whose `can_upcast(event_type, event_version)` holds for
/// the event as the previous ones left it. The upcasters see blank
/// aggregate fields (`aggregate_id`, `aggregate_type`, `sequence`,
/// `metadata`): an upcaster must depend only on type, version and payload.
pub fn upcast_with(
    upcasters: &[Box<dyn EventUpcaster>],
    event_type: &str,
    event_version: &str,
    payload: Value,
) -> (String, Value) {
    let event = SerializedEvent::new(
        String::new(),
        0,
        String::new(),
        event_type.to_owned(),
        event_version.to_owned(),
        payload,
        Value::Null,
    );
    let event = upcast_serialized(upcasters, event);
    (event.event_version, event.payload)
}

/// Applies `upcasters` to a whole [`SerializedEvent`], exactly as cqrs-es
/// does when it loads events (its own `SerializedEvent::upcast` is private).
pub fn upcast_serialized(upcasters: &[Box<dyn EventUpcaster>], event: SerializedEvent) -> SerializedEvent {
    upcasters.iter().fold(event, |event, upcaster| {
        if upcaster.can_upcast(&event.event_type, &event.event_version) {
            upcaster.upcast(event)
        } else {
            event
        }
    })
}

/// [`upcast`] for an [`Envelope`], whose `payload` is the object inside the
/// tag: wrapped under `event_type`, upcast, and unwrapped again (as
/// [`Envelope::from_stored`] does); `event_version` becomes the upcast one.
pub fn upcast_envelope(envelope: Envelope) -> Envelope {
    upcast_envelope_with(registry(), envelope)
}

/// [`upcast_envelope`] with the given upcasters.
pub fn upcast_envelope_with(upcasters: &[Box<dyn EventUpcaster>], mut envelope: Envelope) -> Envelope {
    let mut tagged = Map::with_capacity(1);
    tagged.insert(envelope.event_type.clone(), envelope.payload);
    let (version, payload) =
        upcast_with(upcasters, &envelope.event_type, &envelope.event_version, Value::Object(tagged));
    envelope.event_version = version;
    envelope.payload = match payload {
        Value::Object(mut map) if map.len() == 1 && map.contains_key(&envelope.event_type) => {
            map.remove(&envelope.event_type).unwrap_or(Value::Null)
        }
        other => other,
    };
    envelope
}

/// One version step of one event type: an [`EventUpcaster`] that turns a
/// stored `event_type` payload of version exactly `from` into version `to`.
///
/// `upcast` gets the fields of the payload (the object inside the tag) and
/// returns the fields of the new version; the step re-wraps them under the
/// tag and sets `event_version` to `to`. A payload that is not a tagged
/// object of `event_type` is left untouched, version included, so the
/// decode that follows fails and names the stored version.
///
/// ```
/// use domain::upcast::{upcast_with, VersionStep};
/// use serde_json::json;
///
/// // A (made-up) v0 of OtpVerified called its time `verified`.
/// let step = VersionStep {
///     event_type: "OtpVerified",
///     from: "0",
///     to: "1",
///     upcast: |mut fields| {
///         if let Some(at) = fields.remove("verified") {
///             fields.insert("verified_at".to_owned(), at);
///         }
///         fields
///     },
/// };
/// let v0 = json!({"OtpVerified": {"verified": "2026-12-08T09:16:17Z"}});
/// let (version, payload) = upcast_with(&[Box::new(step)], "OtpVerified", "0", v0);
/// assert_eq!(version, "1");
/// assert_eq!(payload, json!({"OtpVerified": {"verified_at": "2026-12-08T09:16:17Z"}}));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct VersionStep {
    /// The event type (`DomainEvent::event_type`), e.g. `"OtpIssued"`.
    pub event_type: &'static str,
    /// The stored version it reads, e.g. `"1"`.
    pub from: &'static str,
    /// The version it produces, e.g. `"2"`.
    pub to: &'static str,
    /// `from`'s fields → `to`'s fields.
    pub upcast: fn(Map<String, Value>) -> Map<String, Value>,
}

impl EventUpcaster for VersionStep {
    fn can_upcast(&self, event_type: &str, event_version: &str) -> bool {
        event_type == self.event_type && event_version == self.from
    }

    fn upcast(&self, mut event: SerializedEvent) -> SerializedEvent {
        let fields = match &mut event.payload {
            Value::Object(tagged) if tagged.len() == 1 => match tagged.get_mut(self.event_type) {
                Some(Value::Object(fields)) => std::mem::take(fields),
                _ => return event,
            },
            _ => return event,
        };
        let mut tagged = Map::with_capacity(1);
        tagged.insert(self.event_type.to_owned(), Value::Object((self.upcast)(fields)));
        event.payload = Value::Object(tagged);
        event.event_version = self.to.to_owned();
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rename_at(mut fields: Map<String, Value>) -> Map<String, Value> {
        if let Some(at) = fields.remove("at") {
            fields.insert("locked_at".to_owned(), at);
        }
        fields
    }

    fn step() -> Box<dyn EventUpcaster> {
        Box::new(VersionStep { event_type: "OtpChallengeLocked", from: "0", to: "1", upcast: rename_at })
    }

    #[test]
    fn the_registry_is_empty_while_every_type_is_at_version_1() {
        assert!(upcasters().is_empty());
        let payload = json!({"OtpVerified": {"verified_at": "2026-12-08T09:16:17Z"}});
        assert_eq!(upcast("OtpVerified", "1", payload.clone()), ("1".to_owned(), payload));
    }

    #[test]
    fn a_step_applies_only_to_its_type_and_version() {
        let old = json!({"OtpChallengeLocked": {"at": "2026-12-08T09:16:17Z"}});
        let (v, p) = upcast_with(&[step()], "OtpChallengeLocked", "0", old.clone());
        assert_eq!(
            (v.as_str(), p),
            ("1", json!({"OtpChallengeLocked": {"locked_at": "2026-12-08T09:16:17Z"}}))
        );
        assert_eq!(upcast_with(&[step()], "OtpChallengeLocked", "1", old.clone()).1, old);
        assert_eq!(upcast_with(&[step()], "OtpVerified", "0", old.clone()).1, old);
    }

    #[test]
    fn a_payload_of_another_shape_is_left_alone_version_included() {
        let odd = json!({"OtpVerified": {"at": "x"}});
        assert_eq!(upcast_with(&[step()], "OtpChallengeLocked", "0", odd.clone()), ("0".to_owned(), odd));
        let not_object = json!({"OtpChallengeLocked": "x"});
        assert_eq!(upcast_with(&[step()], "OtpChallengeLocked", "0", not_object.clone()).1, not_object);
    }

    #[test]
    fn envelopes_are_upcast_inside_the_tag() {
        let env = Envelope::from_stored(
            uuid::Uuid::nil(),
            "otp_challenge".into(),
            "c1".into(),
            4,
            40,
            "OtpChallengeLocked".into(),
            "0".into(),
            chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
            json!({"OtpChallengeLocked": {"at": "2026-12-08T09:16:17Z"}}),
            json!({}),
        );
        let up = upcast_envelope_with(&[step()], env);
        assert_eq!(up.event_version, "1");
        assert_eq!(up.payload, json!({"locked_at": "2026-12-08T09:16:17Z"}));
        assert!(up.decode::<crate::otp::OtpEvent>().is_ok());
    }
}
