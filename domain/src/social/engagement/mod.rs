//! The `Engagement` aggregate: one user's like and repost of one track, in
//! one stream per (user, track), id `"<user uuid>:<track uuid>"`
//! ([`engagement_id`]). Keyed by the pair (ARCHITECTURE, "Suggested
//! aggregate shapes": `Like` = user:track): a track liked a million times
//! is a million small streams, and one user's concurrent likes of one track
//! are serialised by the stream, so they count once.
//!
//! What the aggregate cannot see — the track's visibility, blocks between
//! the user and the owner — the application service checks on the write
//! side (the track's and the pair's streams) before the command.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The stream id of `user`'s engagement with `track`.
pub fn engagement_id(user: Uuid, track: Uuid) -> String {
    format!("{user}:{track}")
}

/// The user and track an [`engagement_id`] names.
pub fn parse_engagement_id(id: &str) -> Option<(Uuid, Uuid)> {
    let (user, track) = id.split_once(':')?;
    Some((user.parse().ok()?, track.parse().ok()?))
}

/// Commands on an [`Engagement`]; each is idempotent (asking for what
/// already holds appends nothing).
#[derive(Debug, Clone)]
pub enum EngagementCommand {
    /// `owner_id`: the track's owner (recorded for notifications).
    Like {
        user_id: Uuid,
        track_id: Uuid,
        owner_id: Uuid,
        at: DateTime<Utc>,
    },
    Unlike {
        user_id: Uuid,
        track_id: Uuid,
        at: DateTime<Utc>,
    },
    Repost {
        user_id: Uuid,
        track_id: Uuid,
        owner_id: Uuid,
        at: DateTime<Utc>,
    },
    Unrepost {
        user_id: Uuid,
        track_id: Uuid,
        at: DateTime<Utc>,
    },
}

/// Events of the `Engagement` aggregate (ids only, no personal data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum EngagementEvent {
    /// The design card's `LikeTrack`. `owner_id`: the track's owner, so
    /// consumers (notifications) need no other stream.
    TrackLiked {
        user_id: Uuid,
        track_id: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner_id: Option<Uuid>,
        liked_at: DateTime<Utc>,
    },
    TrackUnliked {
        user_id: Uuid,
        track_id: Uuid,
        unliked_at: DateTime<Utc>,
    },
    TrackReposted {
        user_id: Uuid,
        track_id: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner_id: Option<Uuid>,
        reposted_at: DateTime<Utc>,
    },
    TrackUnreposted {
        user_id: Uuid,
        track_id: Uuid,
        unreposted_at: DateTime<Utc>,
    },
}

impl DomainEvent for EngagementEvent {
    fn event_type(&self) -> String {
        match self {
            Self::TrackLiked { .. } => "TrackLiked",
            Self::TrackUnliked { .. } => "TrackUnliked",
            Self::TrackReposted { .. } => "TrackReposted",
            Self::TrackUnreposted { .. } => "TrackUnreposted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Refusals of the `Engagement` aggregate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngagementError {
    /// The command's user and track are not this stream's.
    #[error("the user and track are not this stream's")]
    WrongStream,
}

/// One user's engagement with one track.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Engagement {
    /// (user, track), once the stream has an event.
    pub key: Option<(Uuid, Uuid)>,
    pub liked: bool,
    pub reposted: bool,
}

impl Aggregate for Engagement {
    const TYPE: &'static str = "engagement";
    type Command = EngagementCommand;
    type Event = EngagementEvent;
    type Error = EngagementError;
    type Services = ();

    async fn handle(
        &mut self,
        command: EngagementCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), EngagementError> {
        let (user_id, track_id) = match &command {
            EngagementCommand::Like { user_id, track_id, .. }
            | EngagementCommand::Unlike { user_id, track_id, .. }
            | EngagementCommand::Repost { user_id, track_id, .. }
            | EngagementCommand::Unrepost { user_id, track_id, .. } => (*user_id, *track_id),
        };
        if self.key.is_some_and(|k| k != (user_id, track_id)) {
            return Err(EngagementError::WrongStream);
        }
        let event = match command {
            EngagementCommand::Like { owner_id, at, .. } if !self.liked => {
                Some(EngagementEvent::TrackLiked {
                    user_id,
                    track_id,
                    owner_id: Some(owner_id),
                    liked_at: at,
                })
            }
            EngagementCommand::Unlike { at, .. } if self.liked => {
                Some(EngagementEvent::TrackUnliked { user_id, track_id, unliked_at: at })
            }
            EngagementCommand::Repost { owner_id, at, .. } if !self.reposted => {
                Some(EngagementEvent::TrackReposted {
                    user_id,
                    track_id,
                    owner_id: Some(owner_id),
                    reposted_at: at,
                })
            }
            EngagementCommand::Unrepost { at, .. } if self.reposted => {
                Some(EngagementEvent::TrackUnreposted { user_id, track_id, unreposted_at: at })
            }
            _ => None,
        };
        if let Some(event) = event {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: EngagementEvent) {
        let (user_id, track_id) = match &event {
            EngagementEvent::TrackLiked { user_id, track_id, .. }
            | EngagementEvent::TrackUnliked { user_id, track_id, .. }
            | EngagementEvent::TrackReposted { user_id, track_id, .. }
            | EngagementEvent::TrackUnreposted { user_id, track_id, .. } => (*user_id, *track_id),
        };
        self.key.get_or_insert((user_id, track_id));
        match event {
            EngagementEvent::TrackLiked { .. } => self.liked = true,
            EngagementEvent::TrackUnliked { .. } => self.liked = false,
            EngagementEvent::TrackReposted { .. } => self.reposted = true,
            EngagementEvent::TrackUnreposted { .. } => self.reposted = false,
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
    fn o() -> Uuid {
        Uuid::from_u128(3)
    }
    fn ids() -> (Uuid, Uuid) {
        (Uuid::from_u128(1), Uuid::from_u128(2))
    }

    #[test]
    fn a_like_counts_once_and_an_unlike_of_nothing_is_nothing() {
        let (u, k) = ids();
        let liked =
            EngagementEvent::TrackLiked { user_id: u, track_id: k, owner_id: Some(o()), liked_at: t() };
        TestFramework::<Engagement>::with(())
            .given_no_previous_events()
            .when(EngagementCommand::Like { user_id: u, track_id: k, owner_id: o(), at: t() })
            .then_expect_events(vec![liked.clone()]);
        TestFramework::<Engagement>::with(())
            .given(vec![liked.clone()])
            .when(EngagementCommand::Like { user_id: u, track_id: k, owner_id: o(), at: t() })
            .then_expect_events(vec![]);
        TestFramework::<Engagement>::with(())
            .given_no_previous_events()
            .when(EngagementCommand::Unlike { user_id: u, track_id: k, at: t() })
            .then_expect_events(vec![]);
        TestFramework::<Engagement>::with(())
            .given(vec![liked])
            .when(EngagementCommand::Repost { user_id: u, track_id: k, owner_id: o(), at: t() })
            .then_expect_events(vec![EngagementEvent::TrackReposted {
                user_id: u,
                track_id: k,
                owner_id: Some(o()),
                reposted_at: t(),
            }]);
    }

    #[test]
    fn another_stream_is_refused() {
        let (u, k) = ids();
        TestFramework::<Engagement>::with(())
            .given(vec![EngagementEvent::TrackLiked {
                user_id: u,
                track_id: k,
                owner_id: Some(o()),
                liked_at: t(),
            }])
            .when(EngagementCommand::Like { user_id: k, track_id: u, owner_id: o(), at: t() })
            .then_expect_error(EngagementError::WrongStream);
    }
}
