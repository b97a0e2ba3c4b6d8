//! The `Relationship` aggregate: everything between two users — who follows
//! whom, who blocks whom, who mutes whom — in one stream per unordered
//! pair, id `"<lower uuid>:<higher uuid>"` ([`pair_id`]).
//!
//! Keyed by the pair (ARCHITECTURE, "Suggested aggregate shapes"): a star
//! with a million followers is a million small streams, not one hot one,
//! and a follow and a block between the same two users are decided on the
//! same stream, so they are serialised by its optimistic concurrency — a
//! follow racing a block can never leave a follow standing.

mod aggregate;
mod commands;
mod events;

pub use aggregate::{Relationship, RelationshipError};
pub use commands::RelationshipCommand;
pub use events::{RelationshipEvent, UnfollowCause};

use uuid::Uuid;

/// The stream id of the relationship between `a` and `b` (either order):
/// the two ids, lower first, joined by `:`.
pub fn pair_id(a: Uuid, b: Uuid) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("{lo}:{hi}")
}

/// The two users of a [`pair_id`], lower first; `None` if `id` is not one.
pub fn parse_pair_id(id: &str) -> Option<(Uuid, Uuid)> {
    let (lo, hi) = id.split_once(':')?;
    let (lo, hi) = (lo.parse().ok()?, hi.parse().ok()?);
    (lo < hi).then_some((lo, hi))
}

#[cfg(test)]
mod tests;
