//! The analysts' pseudonymous subject on an encoded envelope (issue 18,
//! docs/envelope.md "Subject").

use commands::keys::SubjectPseudonyms;
use projections::tail::EncodedEnvelope;

/// Appends `"subject"` and `"subject_key"` to the encoded envelope of `row`
/// (its JSON object's last byte is the closing brace) when the event
/// concerns a user (`row.subject`).
pub(super) fn add_subject(row: &mut EncodedEnvelope, pseudonyms: &SubjectPseudonyms) {
    let Some(user) = row.subject else { return };
    if row.value.last() != Some(&b'}') {
        return;
    }
    row.value.pop();
    row.value.extend_from_slice(b",\"subject\":\"");
    row.value.extend_from_slice(pseudonyms.subject(&user).as_bytes());
    row.value.extend_from_slice(b"\",\"subject_key\":");
    // A JSON string of the key id (serde escapes it).
    let _ = serde_json::to_writer(&mut row.value, pseudonyms.key_id());
    row.value.push(b'}');
}
