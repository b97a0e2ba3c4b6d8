use chrono::{DateTime, Utc};
use cqrs_es::test::TestFramework;
use uuid::Uuid;

use super::*;

type RelTest = TestFramework<Relationship>;

fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
}
fn a() -> Uuid {
    Uuid::from_u128(1)
}
fn b() -> Uuid {
    Uuid::from_u128(2)
}
fn followed(f: Uuid, e: Uuid) -> RelationshipEvent {
    RelationshipEvent::UserFollowed { follower: f, followee: e, followed_at: t(0) }
}
fn blocked(x: Uuid, y: Uuid) -> RelationshipEvent {
    RelationshipEvent::UserBlocked { blocker: x, blocked: y, blocked_at: t(1) }
}

#[test]
fn pair_ids_are_the_same_either_way_and_read_back() {
    assert_eq!(pair_id(a(), b()), pair_id(b(), a()));
    assert_eq!(parse_pair_id(&pair_id(b(), a())), Some((a(), b())));
    assert_eq!(parse_pair_id(&format!("{}:{}", b(), a())), None, "higher id first is not a pair id");
    assert_eq!(parse_pair_id("x:y"), None);
}

#[test]
fn a_follow_is_recorded_once() {
    RelTest::with(())
        .given_no_previous_events()
        .when(RelationshipCommand::Follow { actor: a(), other: b(), at: t(0) })
        .then_expect_events(vec![followed(a(), b())]);
    RelTest::with(())
        .given(vec![followed(a(), b())])
        .when(RelationshipCommand::Follow { actor: a(), other: b(), at: t(5) })
        .then_expect_events(vec![]);
}

#[test]
fn following_back_is_a_second_edge() {
    RelTest::with(())
        .given(vec![followed(a(), b())])
        .when(RelationshipCommand::Follow { actor: b(), other: a(), at: t(0) })
        .then_expect_events(vec![followed(b(), a())]);
}

#[test]
fn unfollowing_a_non_follow_writes_nothing() {
    RelTest::with(())
        .given_no_previous_events()
        .when(RelationshipCommand::Unfollow { actor: a(), other: b(), at: t(0) })
        .then_expect_events(vec![]);
    RelTest::with(())
        .given(vec![followed(b(), a())])
        .when(RelationshipCommand::Unfollow { actor: a(), other: b(), at: t(0) })
        .then_expect_events(vec![]);
}

#[test]
fn oneself_is_refused() {
    RelTest::with(())
        .given_no_previous_events()
        .when(RelationshipCommand::Follow { actor: a(), other: a(), at: t(0) })
        .then_expect_error(RelationshipError::SelfRelation);
    RelTest::with(())
        .given_no_previous_events()
        .when(RelationshipCommand::Block { actor: a(), other: a(), at: t(0) })
        .then_expect_error(RelationshipError::SelfRelation);
}

#[test]
fn a_block_ends_the_follows_both_ways_in_the_same_append() {
    RelTest::with(())
        .given(vec![followed(a(), b()), followed(b(), a())])
        .when(RelationshipCommand::Block { actor: b(), other: a(), at: t(1) })
        .then_expect_events(vec![
            RelationshipEvent::UserUnfollowed {
                follower: b(),
                followee: a(),
                cause: UnfollowCause::Blocked,
                unfollowed_at: t(1),
            },
            RelationshipEvent::UserUnfollowed {
                follower: a(),
                followee: b(),
                cause: UnfollowCause::Blocked,
                unfollowed_at: t(1),
            },
            blocked(b(), a()),
        ]);
}

#[test]
fn no_follow_while_either_blocks() {
    for block in [blocked(a(), b()), blocked(b(), a())] {
        RelTest::with(())
            .given(vec![block.clone()])
            .when(RelationshipCommand::Follow { actor: a(), other: b(), at: t(2) })
            .then_expect_error(RelationshipError::Blocked);
    }
}

#[test]
fn unblocking_allows_following_again_but_restores_nothing() {
    let unblocked = RelationshipEvent::UserUnblocked { blocker: a(), blocked: b(), unblocked_at: t(2) };
    RelTest::with(())
        .given(vec![blocked(a(), b())])
        .when(RelationshipCommand::Unblock { actor: a(), other: b(), at: t(2) })
        .then_expect_events(vec![unblocked.clone()]);
    // Only the blocker can lift a block.
    RelTest::with(())
        .given(vec![blocked(a(), b())])
        .when(RelationshipCommand::Unblock { actor: b(), other: a(), at: t(2) })
        .then_expect_events(vec![]);
    RelTest::with(())
        .given(vec![followed(a(), b()), blocked(b(), a()), unblocked.clone()])
        .when(RelationshipCommand::Follow { actor: b(), other: a(), at: t(3) })
        .then_expect_error(RelationshipError::Blocked);
}

#[test]
fn a_block_by_both_needs_both_lifted() {
    let unblocked = RelationshipEvent::UserUnblocked { blocker: a(), blocked: b(), unblocked_at: t(2) };
    RelTest::with(())
        .given(vec![blocked(a(), b()), blocked(b(), a()), unblocked])
        .when(RelationshipCommand::Follow { actor: a(), other: b(), at: t(3) })
        .then_expect_error(RelationshipError::Blocked);
}

#[test]
fn mutes_are_idempotent_and_change_no_follow() {
    let muted = RelationshipEvent::UserMuted { muter: a(), muted: b(), muted_at: t(0) };
    RelTest::with(())
        .given(vec![followed(a(), b())])
        .when(RelationshipCommand::Mute { actor: a(), other: b(), at: t(0) })
        .then_expect_events(vec![muted.clone()]);
    RelTest::with(())
        .given(vec![muted.clone()])
        .when(RelationshipCommand::Mute { actor: a(), other: b(), at: t(0) })
        .then_expect_events(vec![]);
    RelTest::with(())
        .given(vec![muted])
        .when(RelationshipCommand::Unmute { actor: a(), other: b(), at: t(4) })
        .then_expect_events(vec![RelationshipEvent::UserUnmuted {
            muter: a(),
            muted: b(),
            unmuted_at: t(4),
        }]);
}

#[test]
fn a_command_for_another_pair_is_refused() {
    let c = Uuid::from_u128(3);
    RelTest::with(())
        .given(vec![followed(a(), b())])
        .when(RelationshipCommand::Follow { actor: a(), other: c, at: t(0) })
        .then_expect_error(RelationshipError::WrongPair);
}
