use std::collections::BTreeSet;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{RelationshipCommand, RelationshipEvent, UnfollowCause};

/// Refusals of the `Relationship` aggregate. `code()` is the API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelationshipError {
    /// Following, blocking or muting oneself.
    #[error("you cannot do this to yourself")]
    SelfRelation,
    /// A follow between users of which one blocks the other.
    #[error("one of you blocks the other")]
    Blocked,
    /// The command's users are not the pair of this stream.
    #[error("the users are not the pair of this relationship")]
    WrongPair,
}

impl RelationshipError {
    /// Stable snake_case code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            Self::SelfRelation => "self_relation",
            Self::Blocked => "blocked",
            Self::WrongPair => "wrong_pair",
        }
    }
}

/// State of the relationship of one pair: the directed edges that hold,
/// each as `(from, to)`.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Relationship {
    /// The pair, lower id first, once the stream has an event.
    pub pair: Option<(Uuid, Uuid)>,
    pub follows: BTreeSet<(Uuid, Uuid)>,
    pub blocks: BTreeSet<(Uuid, Uuid)>,
    pub mutes: BTreeSet<(Uuid, Uuid)>,
}

impl Relationship {
    /// `a` follows `b`.
    pub fn follows(&self, a: Uuid, b: Uuid) -> bool {
        self.follows.contains(&(a, b))
    }

    /// `a` blocks `b`.
    pub fn blocks(&self, a: Uuid, b: Uuid) -> bool {
        self.blocks.contains(&(a, b))
    }

    /// `a` mutes `b`.
    pub fn mutes(&self, a: Uuid, b: Uuid) -> bool {
        self.mutes.contains(&(a, b))
    }

    /// Either of the two blocks the other.
    pub fn any_block(&self) -> bool {
        !self.blocks.is_empty()
    }

    fn check_pair(&self, actor: Uuid, other: Uuid) -> Result<(), RelationshipError> {
        if actor == other {
            return Err(RelationshipError::SelfRelation);
        }
        let (lo, hi) = if actor < other { (actor, other) } else { (other, actor) };
        match self.pair {
            Some(pair) if pair != (lo, hi) => Err(RelationshipError::WrongPair),
            _ => Ok(()),
        }
    }
}

impl Aggregate for Relationship {
    const TYPE: &'static str = "relationship";
    type Command = RelationshipCommand;
    type Event = RelationshipEvent;
    type Error = RelationshipError;
    type Services = ();

    async fn handle(
        &mut self,
        command: RelationshipCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), RelationshipError> {
        let (actor, other) = command.users();
        self.check_pair(actor, other)?;
        let mut events = Vec::new();
        match command {
            RelationshipCommand::Follow { at, .. } => {
                if self.any_block() {
                    return Err(RelationshipError::Blocked);
                }
                if !self.follows(actor, other) {
                    events.push(RelationshipEvent::UserFollowed {
                        follower: actor,
                        followee: other,
                        followed_at: at,
                    });
                }
            }
            RelationshipCommand::Unfollow { at, .. } => {
                if self.follows(actor, other) {
                    events.push(RelationshipEvent::UserUnfollowed {
                        follower: actor,
                        followee: other,
                        cause: UnfollowCause::Unfollowed,
                        unfollowed_at: at,
                    });
                }
            }
            RelationshipCommand::Block { at, .. } => {
                if !self.blocks(actor, other) {
                    for (follower, followee) in [(actor, other), (other, actor)] {
                        if self.follows(follower, followee) {
                            events.push(RelationshipEvent::UserUnfollowed {
                                follower,
                                followee,
                                cause: UnfollowCause::Blocked,
                                unfollowed_at: at,
                            });
                        }
                    }
                    events.push(RelationshipEvent::UserBlocked {
                        blocker: actor,
                        blocked: other,
                        blocked_at: at,
                    });
                }
            }
            RelationshipCommand::Unblock { at, .. } => {
                if self.blocks(actor, other) {
                    events.push(RelationshipEvent::UserUnblocked {
                        blocker: actor,
                        blocked: other,
                        unblocked_at: at,
                    });
                }
            }
            RelationshipCommand::Mute { at, .. } => {
                if !self.mutes(actor, other) {
                    events.push(RelationshipEvent::UserMuted { muter: actor, muted: other, muted_at: at });
                }
            }
            RelationshipCommand::Unmute { at, .. } => {
                if self.mutes(actor, other) {
                    events.push(RelationshipEvent::UserUnmuted {
                        muter: actor,
                        muted: other,
                        unmuted_at: at,
                    });
                }
            }
        }
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: RelationshipEvent) {
        let edge = |a: Uuid, b: Uuid| (a, b);
        let (a, b) = match &event {
            RelationshipEvent::UserFollowed { follower, followee, .. }
            | RelationshipEvent::UserUnfollowed { follower, followee, .. } => (*follower, *followee),
            RelationshipEvent::UserBlocked { blocker, blocked, .. }
            | RelationshipEvent::UserUnblocked { blocker, blocked, .. } => (*blocker, *blocked),
            RelationshipEvent::UserMuted { muter, muted, .. }
            | RelationshipEvent::UserUnmuted { muter, muted, .. } => (*muter, *muted),
        };
        if self.pair.is_none() {
            self.pair = Some(if a < b { (a, b) } else { (b, a) });
        }
        match event {
            RelationshipEvent::UserFollowed { .. } => {
                self.follows.insert(edge(a, b));
            }
            RelationshipEvent::UserUnfollowed { .. } => {
                self.follows.remove(&edge(a, b));
            }
            RelationshipEvent::UserBlocked { .. } => {
                self.blocks.insert(edge(a, b));
            }
            RelationshipEvent::UserUnblocked { .. } => {
                self.blocks.remove(&edge(a, b));
            }
            RelationshipEvent::UserMuted { .. } => {
                self.mutes.insert(edge(a, b));
            }
            RelationshipEvent::UserUnmuted { .. } => {
                self.mutes.remove(&edge(a, b));
            }
        }
    }
}
