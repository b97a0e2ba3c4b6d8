//! The read-your-writes token (ARCHITECTURE decided 13): where a command's
//! last event landed. The api sends it as `X-Consistency-Token` on every
//! command answer and accepts it back on every query, which then waits
//! until the read models it reads have applied that event.
//!
//! To clients the token is an opaque string; its form is
//! `v1.<position>.<sequence>.<aggregate_type>.<aggregate_id>`, at most
//! [`MAX_TOKEN_LEN`] characters. A forged token can only make a query wait
//! (at most `CONSISTENCY_WAIT_MS`) and answer 503: it reveals nothing.

/// Longest token accepted back (characters).
pub const MAX_TOKEN_LEN: usize = 200;

/// The position of one appended event, and its stream coordinates (so the
/// wait can ask each read model's own checkpoint for that stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyToken {
    /// Global store position of the event (`events.position`).
    pub position: i64,
    /// The event's aggregate type, e.g. `relationship`.
    pub aggregate_type: String,
    /// The event's stream id.
    pub aggregate_id: String,
    /// The event's sequence in its stream (1-based).
    pub sequence: i64,
}

impl ConsistencyToken {
    /// The token as sent to clients.
    pub fn encode(&self) -> String {
        format!("v1.{}.{}.{}.{}", self.position, self.sequence, self.aggregate_type, self.aggregate_id)
    }

    /// Reads a token sent back by a client; `None` when it is not one
    /// (too long, wrong version, malformed numbers, empty parts).
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() > MAX_TOKEN_LEN {
            return None;
        }
        let mut parts = text.trim().splitn(5, '.');
        if parts.next()? != "v1" {
            return None;
        }
        let position = parts.next()?.parse().ok()?;
        let sequence = parts.next()?.parse().ok()?;
        let aggregate_type = parts.next()?;
        let aggregate_id = parts.next()?;
        let valid_type =
            !aggregate_type.is_empty() && aggregate_type.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        if !valid_type || aggregate_id.is_empty() || aggregate_id.chars().any(char::is_control) {
            return None;
        }
        Some(Self {
            position,
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            sequence,
        })
    }

    /// The later of two tokens by store position (a client holding several
    /// keeps the last).
    #[must_use]
    pub fn later(self, other: Self) -> Self {
        if other.position > self.position {
            other
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_as_written() {
        let t = ConsistencyToken {
            position: 42,
            aggregate_type: "relationship".into(),
            aggregate_id: "0190a:0190b".into(),
            sequence: 3,
        };
        assert_eq!(ConsistencyToken::parse(&t.encode()), Some(t));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in ["", "v2.1.1.user.x", "v1.x.1.user.a", "v1.1.1.User.a", "v1.1.1.user.", "v1.1.1"] {
            assert_eq!(ConsistencyToken::parse(bad), None, "{bad}");
        }
        assert_eq!(ConsistencyToken::parse(&format!("v1.1.1.user.{}", "a".repeat(300))), None);
    }
}
