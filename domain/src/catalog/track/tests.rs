use chrono::{DateTime, Utc};
use cqrs_es::test::TestFramework;
use uuid::Uuid;

use super::*;
use crate::values::Sealed;

type TrackTest = TestFramework<Track>;

fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
}
fn owner() -> Uuid {
    Uuid::from_u128(1)
}
fn id() -> Uuid {
    Uuid::from_u128(9)
}
fn metadata() -> TrackMetadata {
    TrackMetadata::parse("Night Drive", "", "synthwave", &["retro".into()], 180_000).unwrap()
}
fn created(visibility: Visibility, token: Option<Sealed>) -> TrackEvent {
    TrackEvent::TrackCreated {
        track_id: id(),
        owner_id: owner(),
        slug: "night-drive".into(),
        title: "Night Drive".into(),
        description: String::new(),
        genre: "synthwave".into(),
        tags: vec!["retro".into()],
        duration_ms: 180_000,
        visibility,
        secret_token: token,
        processing: Processing::NoAudio,
        created_at: t(0),
    }
}

#[test]
fn a_track_is_created_once_with_no_audio() {
    let create = TrackCommand::Create {
        track_id: id(),
        owner_id: owner(),
        slug: "night-drive".into(),
        metadata: metadata(),
        visibility: Visibility::Public,
        secret_token: Some(Sealed("ignored for a public track".into())),
        at: t(0),
    };
    TrackTest::with(())
        .given_no_previous_events()
        .when(create.clone())
        .then_expect_events(vec![created(Visibility::Public, None)]);
    TrackTest::with(())
        .given(vec![created(Visibility::Public, None)])
        .when(create)
        .then_expect_error(TrackError::AlreadyExists);
}

#[test]
fn only_the_owner_edits_or_deletes() {
    let stranger = Uuid::from_u128(2);
    TrackTest::with(())
        .given(vec![created(Visibility::Public, None)])
        .when(TrackCommand::Delete { actor: stranger, at: t(1) })
        .then_expect_error(TrackError::NotOwner);
    let patch = TrackPatch { title: Some("Other".into()), ..TrackPatch::default() };
    TrackTest::with(())
        .given(vec![created(Visibility::Public, None)])
        .when(TrackCommand::Update { actor: stranger, patch, secret_token: None, at: t(1) })
        .then_expect_error(TrackError::NotOwner);
}

#[test]
fn an_edit_records_only_what_changes() {
    let patch = TrackPatch {
        title: Some("Night Drive".into()),
        genre: Some("house".into()),
        ..TrackPatch::default()
    };
    TrackTest::with(())
        .given(vec![created(Visibility::Public, None)])
        .when(TrackCommand::Update { actor: owner(), patch, secret_token: None, at: t(1) })
        .then_expect_events(vec![TrackEvent::TrackUpdated {
            patch: TrackPatch { genre: Some("house".into()), ..TrackPatch::default() },
            secret_token: None,
            updated_at: t(1),
        }]);
    let same = TrackPatch { title: Some("Night Drive".into()), ..TrackPatch::default() };
    TrackTest::with(())
        .given(vec![created(Visibility::Public, None)])
        .when(TrackCommand::Update { actor: owner(), patch: same, secret_token: None, at: t(1) })
        .then_expect_events(vec![]);
}

#[test]
fn becoming_private_brings_a_token_once() {
    let to_private = TrackPatch { visibility: Some(Visibility::Private), ..TrackPatch::default() };
    TrackTest::with(())
        .given(vec![created(Visibility::Public, None)])
        .when(TrackCommand::Update {
            actor: owner(),
            patch: to_private.clone(),
            secret_token: Some(Sealed("tok".into())),
            at: t(1),
        })
        .then_expect_events(vec![TrackEvent::TrackUpdated {
            patch: to_private,
            secret_token: Some(Sealed("tok".into())),
            updated_at: t(1),
        }]);
}

#[test]
fn a_deleted_track_is_gone() {
    TrackTest::with(())
        .given(vec![created(Visibility::Public, None), TrackEvent::TrackDeleted { deleted_at: t(1) }])
        .when(TrackCommand::Delete { actor: owner(), at: t(2) })
        .then_expect_error(TrackError::NotFound);
}

#[test]
fn metadata_bounds() {
    let ok = |title: &str, tags: usize, ms: i64| {
        let tags: Vec<String> = (0..tags).map(|i| format!("t{i}")).collect();
        TrackMetadata::parse(title, "", "", &tags, ms).map_err(|e| e.field)
    };
    assert!(ok("x", 10, 1).is_ok());
    assert_eq!(ok("", 0, 1), Err("title"));
    assert_eq!(ok(&"x".repeat(101), 0, 1), Err("title"));
    assert_eq!(ok("a\u{7}b", 0, 1), Err("title"));
    assert_eq!(ok("x", 11, 1), Err("tags"));
    assert_eq!(ok("x", 0, 0), Err("duration_ms"));
    assert_eq!(ok("x", 0, -5), Err("duration_ms"));
    assert_eq!(ok("x", 0, MAX_DURATION_MS + 1), Err("duration_ms"));
    assert!(Visibility::parse("unlisted").is_err());
}

#[test]
fn slugs() {
    assert_eq!(slugify("Night Drive (Remix)!"), "night-drive-remix");
    assert_eq!(slugify("  --Ünïcode  "), "n-code");
    assert_eq!(slugify("🎵🎵"), "track");
    assert!(slugify(&"ab ".repeat(100)).len() <= 80);
}
