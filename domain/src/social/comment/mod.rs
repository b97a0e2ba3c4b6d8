//! The `Comment` aggregate: a comment on a track, optionally at a moment of
//! it (`timestamp_ms`, SoundCloud's waveform comments) and optionally a
//! reply to a top-level comment of the same track (one level deep).
//! Aggregate id = the comment id. The body is public content the author
//! published (not sealed); a deletion is a tombstone: replies stay, the
//! body is gone from the read model.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::InvalidValue;

/// Longest comment body, in characters.
pub const MAX_COMMENT_CHARS: usize = 1_000;

/// A validated comment body: 1–1,000 characters after trimming; newlines
/// allowed, other control characters not.
///
/// # Errors
/// [`InvalidValue`] (field `body`).
pub fn parse_body(raw: &str) -> Result<String, InvalidValue> {
    let s = raw.trim();
    if s.is_empty() || s.chars().count() > MAX_COMMENT_CHARS {
        return Err(InvalidValue::new("body", "must be 1 to 1,000 characters"));
    }
    if s.chars().any(|c| c.is_control() && c != '\n') {
        return Err(InvalidValue::new("body", "must not contain control characters"));
    }
    Ok(s.to_owned())
}

#[derive(Debug, Clone)]
pub enum CommentCommand {
    /// Post a comment; the caller has checked the track (visible, not
    /// blocked), `timestamp_ms` against its duration and `reply_to`
    /// (a top-level comment of the same track).
    Post {
        comment_id: Uuid,
        track_id: Uuid,
        author_id: Uuid,
        body: String,
        timestamp_ms: Option<i64>,
        reply_to: Option<Uuid>,
        /// The track's owner and the replied-to comment's author (recorded
        /// for notifications).
        track_owner: Uuid,
        parent_author: Option<Uuid>,
        at: DateTime<Utc>,
    },
    /// Delete: by its author or by the track's owner (`track_owner`).
    Delete { actor: Uuid, track_owner: Uuid, at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum CommentEvent {
    CommentPosted {
        comment_id: Uuid,
        track_id: Uuid,
        author_id: Uuid,
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timestamp_ms: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<Uuid>,
        /// The track's owner, so consumers (notifications) need no other stream.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        track_owner: Option<Uuid>,
        /// The author of the comment replied to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent_author: Option<Uuid>,
        posted_at: DateTime<Utc>,
    },
    CommentDeleted {
        deleted_by: Uuid,
        deleted_at: DateTime<Utc>,
    },
}

impl DomainEvent for CommentEvent {
    fn event_type(&self) -> String {
        match self {
            Self::CommentPosted { .. } => "CommentPosted",
            Self::CommentDeleted { .. } => "CommentDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommentError {
    #[error("the comment already exists")]
    AlreadyExists,
    #[error("no such comment")]
    NotFound,
    #[error("only the comment's author or the track's owner may delete it")]
    NotAllowed,
}

/// State of one comment.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    pub id: Option<Uuid>,
    pub track_id: Option<Uuid>,
    pub author_id: Option<Uuid>,
    pub reply_to: Option<Uuid>,
    pub deleted: bool,
}

impl Aggregate for Comment {
    const TYPE: &'static str = "comment";
    type Command = CommentCommand;
    type Event = CommentEvent;
    type Error = CommentError;
    type Services = ();

    async fn handle(
        &mut self,
        command: CommentCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), CommentError> {
        match command {
            CommentCommand::Post {
                comment_id,
                track_id,
                author_id,
                body,
                timestamp_ms,
                reply_to,
                track_owner,
                parent_author,
                at,
            } => {
                if self.id.is_some() {
                    return Err(CommentError::AlreadyExists);
                }
                let event = CommentEvent::CommentPosted {
                    comment_id,
                    track_id,
                    author_id,
                    body,
                    timestamp_ms,
                    reply_to,
                    track_owner: Some(track_owner),
                    parent_author,
                    posted_at: at,
                };
                sink.write(event, self).await;
            }
            CommentCommand::Delete { actor, track_owner, at } => {
                if self.id.is_none() || self.deleted {
                    return Err(CommentError::NotFound);
                }
                if self.author_id != Some(actor) && track_owner != actor {
                    return Err(CommentError::NotAllowed);
                }
                sink.write(CommentEvent::CommentDeleted { deleted_by: actor, deleted_at: at }, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: CommentEvent) {
        match event {
            CommentEvent::CommentPosted { comment_id, track_id, author_id, reply_to, .. } => {
                self.id = Some(comment_id);
                self.track_id = Some(track_id);
                self.author_id = Some(author_id);
                self.reply_to = reply_to;
            }
            CommentEvent::CommentDeleted { .. } => self.deleted = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    fn t() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }
    fn posted() -> CommentEvent {
        CommentEvent::CommentPosted {
            comment_id: Uuid::from_u128(9),
            track_id: Uuid::from_u128(8),
            author_id: Uuid::from_u128(1),
            body: "nice drop".into(),
            timestamp_ms: Some(61_000),
            reply_to: None,
            track_owner: Some(Uuid::from_u128(2)),
            parent_author: None,
            posted_at: t(),
        }
    }

    #[test]
    fn the_author_or_the_track_owner_deletes_nobody_else() {
        let owner = Uuid::from_u128(2);
        for actor in [Uuid::from_u128(1), owner] {
            TestFramework::<Comment>::with(())
                .given(vec![posted()])
                .when(CommentCommand::Delete { actor, track_owner: owner, at: t() })
                .then_expect_events(vec![CommentEvent::CommentDeleted {
                    deleted_by: actor,
                    deleted_at: t(),
                }]);
        }
        TestFramework::<Comment>::with(())
            .given(vec![posted()])
            .when(CommentCommand::Delete { actor: Uuid::from_u128(3), track_owner: owner, at: t() })
            .then_expect_error(CommentError::NotAllowed);
        TestFramework::<Comment>::with(())
            .given(vec![posted(), CommentEvent::CommentDeleted { deleted_by: owner, deleted_at: t() }])
            .when(CommentCommand::Delete { actor: owner, track_owner: owner, at: t() })
            .then_expect_error(CommentError::NotFound);
    }

    #[test]
    fn bodies() {
        assert!(parse_body(" ok ").is_ok());
        assert!(parse_body("").is_err());
        assert!(parse_body(&"x".repeat(1_001)).is_err());
        assert!(parse_body("a\u{7}").is_err());
        assert!(parse_body("two\nlines").is_ok());
    }
}
