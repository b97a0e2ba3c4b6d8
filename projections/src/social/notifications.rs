//! The `notifications` read model: who is told what — X followed you,
//! liked / reposted / commented on your track, replied to your comment —
//! one row per notifying event (`rm_notifications`, keyed by the event id:
//! a duplicate inserts nothing), and each user's read mark
//! (`rm_notification_reads`, from `inbox` events). Grouped per kind, track
//! and day when read; mutes and blocks apply when read, so lifting a mute
//! shows what it hid. Every event carries its recipients (the track's
//! owner, the replied-to author), so the rows depend on no other stream
//! and converge in any order (decided 16).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::envelope::Envelope;
use domain::moderation::{Action, CaseEvent, SubjectKind};
use domain::social::comment::CommentEvent;
use domain::social::engagement::EngagementEvent;
use domain::social::inbox::InboxEvent;
use domain::social::relationship::RelationshipEvent;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::runtime::{Checkpoints, ProjectionError, Projector};

/// Projects notifying events into `rm_notifications`.
pub struct NotificationsProjector;

/// One notice an event gives: recipient, kind, actor, track, comment, time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub recipient: Uuid,
    pub kind: &'static str,
    pub actor: Uuid,
    pub track: Option<Uuid>,
    pub comment: Option<Uuid>,
    pub at: DateTime<Utc>,
    /// What a moderation notice says (`action`, `reason`, `until`,
    /// `subject`); `None` for the social kinds.
    pub detail: Option<serde_json::Value>,
}

/// The notices `env` gives (none for events that tell nobody, e.g. an
/// unfollow, or someone liking their own track).
///
/// # Errors
/// [`ProjectionError::Decode`] when the payload does not decode.
pub fn notices(env: &Envelope) -> Result<Vec<Notice>, ProjectionError> {
    let decode = |e| ProjectionError::decode(env, e);
    let mut out = Vec::new();
    match env.aggregate_type.as_str() {
        "relationship" => {
            if let RelationshipEvent::UserFollowed { follower, followee, followed_at } =
                env.decode().map_err(decode)?
            {
                out.push(Notice {
                    recipient: followee,
                    kind: "follow",
                    actor: follower,
                    track: None,
                    comment: None,
                    at: followed_at,
                    detail: None,
                });
            }
        }
        "engagement" => match env.decode().map_err(decode)? {
            EngagementEvent::TrackLiked { user_id, track_id, owner_id: Some(owner), liked_at } => {
                out.push(Notice {
                    recipient: owner,
                    kind: "like",
                    actor: user_id,
                    track: Some(track_id),
                    comment: None,
                    at: liked_at,
                    detail: None,
                });
            }
            EngagementEvent::TrackReposted { user_id, track_id, owner_id: Some(owner), reposted_at } => {
                out.push(Notice {
                    recipient: owner,
                    kind: "repost",
                    actor: user_id,
                    track: Some(track_id),
                    comment: None,
                    at: reposted_at,
                    detail: None,
                });
            }
            _ => {}
        },
        "comment" => {
            if let CommentEvent::CommentPosted {
                comment_id,
                track_id,
                author_id,
                track_owner,
                parent_author,
                posted_at,
                ..
            } = env.decode().map_err(decode)?
            {
                if let Some(parent) = parent_author {
                    out.push(Notice {
                        recipient: parent,
                        kind: "reply",
                        actor: author_id,
                        track: Some(track_id),
                        comment: Some(comment_id),
                        at: posted_at,
                        detail: None,
                    });
                }
                if let Some(owner) = track_owner.filter(|o| Some(*o) != parent_author) {
                    out.push(Notice {
                        recipient: owner,
                        kind: "comment",
                        actor: author_id,
                        track: Some(track_id),
                        comment: Some(comment_id),
                        at: posted_at,
                        detail: None,
                    });
                }
            }
        }
        "moderation" => {
            if let CaseEvent::ModerationActionTaken {
                subject,
                action,
                reason,
                until,
                reporters,
                report_state,
                owner,
                taken_at,
                ..
            } = env.decode().map_err(decode)?
            {
                // Never who acted: the actor of a moderation notice is the
                // nil id ("the moderators").
                let track = (subject.kind == SubjectKind::Track).then_some(subject.id);
                let comment = (subject.kind == SubjectKind::Comment).then_some(subject.id);
                let about = serde_json::json!({"type": subject.kind.as_str(), "id": subject.id});
                if let Some(state) = report_state {
                    for reporter in reporters {
                        out.push(Notice {
                            recipient: reporter,
                            kind: "report_resolved",
                            actor: Uuid::nil(),
                            track,
                            comment,
                            at: taken_at,
                            detail: Some(serde_json::json!({
                                "outcome": action.as_str(), "report_state": state.as_str(), "subject": about})),
                        });
                    }
                }
                let tells_owner = !matches!(action, Action::Escalate | Action::Dismiss | Action::Comment);
                if let Some(owner) = owner.filter(|_| tells_owner) {
                    out.push(Notice {
                        recipient: owner,
                        kind: "moderation",
                        actor: Uuid::nil(),
                        track,
                        comment,
                        at: taken_at,
                        detail: Some(serde_json::json!({
                            "action": action.as_str(), "reason": reason, "until": until, "subject": about})),
                    });
                }
            }
        }
        _ => {}
    }
    out.retain(|n| n.recipient != n.actor && !n.recipient.is_nil());
    Ok(out)
}

#[async_trait]
impl Projector for NotificationsProjector {
    fn name(&self) -> &'static str {
        "notifications"
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        matches!(aggregate_type, "relationship" | "engagement" | "comment" | "inbox" | "moderation")
    }

    fn checkpoints(&self) -> Checkpoints {
        Checkpoints::InReadModel
    }

    /// Inbox events: the read mark's `seq`. Others: a row of the stream at
    /// or past `sequence`, or — for an event that tells nobody — the event
    /// read back from the store gives no notice (nothing to wait for).
    async fn has_applied(
        &self,
        pool: &PgPool,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
    ) -> Result<bool, sqlx::Error> {
        if aggregate_type == "inbox" {
            let Ok(user) = aggregate_id.parse::<Uuid>() else { return Ok(false) };
            let seq: Option<i64> =
                sqlx::query_scalar("SELECT seq FROM rm_notification_reads WHERE user_id = $1")
                    .bind(user)
                    .fetch_optional(pool)
                    .await?;
            return Ok(seq.is_some_and(|s| s >= sequence));
        }
        let applied: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM rm_notifications WHERE stream_type = $1 AND stream_id = $2 AND seq >= $3)",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence)
        .fetch_one(pool)
        .await?;
        if applied {
            return Ok(true);
        }
        let stored: Option<(String, String, serde_json::Value)> = sqlx::query_as(
            "SELECT event_type, event_version, payload::jsonb FROM events
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence)
        .fetch_optional(pool)
        .await?;
        let Some((event_type, event_version, payload)) = stored else { return Ok(false) };
        let env = Envelope::from_stored(
            Uuid::nil(),
            aggregate_type.to_owned(),
            aggregate_id.to_owned(),
            sequence,
            0,
            event_type,
            event_version,
            Utc::now(),
            payload,
            serde_json::Value::Null,
        );
        Ok(notices(&env).map(|n| n.is_empty()).unwrap_or(false))
    }

    async fn apply(&self, conn: &mut PgConnection, env: &Envelope) -> Result<(), ProjectionError> {
        if env.aggregate_type == "inbox" {
            let InboxEvent::NotificationsRead { up_to, .. } =
                env.decode().map_err(|e| ProjectionError::decode(env, e))?;
            let user: Uuid = env
                .aggregate_id
                .parse()
                .map_err(|_| ProjectionError::Other(anyhow::anyhow!("inbox id is not a UUID")))?;
            sqlx::query(
                "INSERT INTO rm_notification_reads (user_id, read_up_to, seq) VALUES ($1, $2, $3)
                 ON CONFLICT (user_id) DO UPDATE SET read_up_to = EXCLUDED.read_up_to, seq = EXCLUDED.seq
                 WHERE rm_notification_reads.seq < EXCLUDED.seq",
            )
            .bind(user)
            .bind(up_to)
            .bind(env.sequence)
            .execute(conn)
            .await?;
            return Ok(());
        }
        for (i, n) in notices(env)?.into_iter().enumerate() {
            // One event may tell several people (a reply on someone's
            // track, a moderation action's reporters and owner): the n-th
            // row's key is the event id XOR n (deterministic, so a
            // redelivery inserts nothing).
            let key = Uuid::from_u128(env.event_id.as_u128() ^ i as u128);
            sqlx::query(
                "INSERT INTO rm_notifications (event_id, recipient_id, kind, actor_id, track_id, comment_id, at,
                                               stream_type, stream_id, seq, detail)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(key)
            .bind(n.recipient)
            .bind(n.kind)
            .bind(n.actor)
            .bind(n.track)
            .bind(n.comment)
            .bind(n.at)
            .bind(&env.aggregate_type)
            .bind(&env.aggregate_id)
            .bind(env.sequence)
            .bind(n.detail)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_notifications", "rm_notification_reads"]
    }
}

/// A group of notifications: one kind, one track (none for follows), one
/// UTC day ("A and 12 others liked …").
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct NotificationGroup {
    pub kind: String,
    pub track_id: Option<Uuid>,
    pub day: chrono::NaiveDate,
    /// The newest three actors, newest first.
    pub actors: Vec<Uuid>,
    /// Notifications in the group.
    pub count: i64,
    pub latest_at: DateTime<Utc>,
    /// Some of them are after the user's read mark.
    pub unread: bool,
    /// The newest notice's detail (moderation notices).
    pub detail: Option<serde_json::Value>,
}

/// Filters out notices of actors `$1` mutes, blocks or is blocked by.
const VISIBLE: &str = "NOT EXISTS (SELECT 1 FROM rm_mutes m WHERE m.active AND m.muter_id = $1 AND m.muted_id = n.actor_id)
    AND NOT EXISTS (SELECT 1 FROM rm_blocks b WHERE b.active
        AND ((b.blocker_id = $1 AND b.blocked_id = n.actor_id) OR (b.blocker_id = n.actor_id AND b.blocked_id = $1)))";

/// `user`'s notification groups, newest first, those whose newest item is
/// before `before` (the cursor), at most `limit`.
///
/// # Errors
/// Database errors.
pub async fn groups(
    pool: &PgPool,
    user: Uuid,
    before: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<NotificationGroup>, sqlx::Error> {
    sqlx::query_as::<_, NotificationGroup>(&format!(
        "SELECT n.kind, n.track_id, (n.at AT TIME ZONE 'UTC')::date AS day,
                (array_agg(n.actor_id ORDER BY n.at DESC))[1:3] AS actors,
                count(*) AS count, max(n.at) AS latest_at,
                bool_or(n.at > COALESCE(r.read_up_to, '-infinity')) AS unread,
                (array_agg(n.detail ORDER BY n.at DESC))[1] AS detail
         FROM rm_notifications n LEFT JOIN rm_notification_reads r ON r.user_id = n.recipient_id
         WHERE n.recipient_id = $1 AND {VISIBLE}
         GROUP BY n.kind, n.track_id, (n.at AT TIME ZONE 'UTC')::date
         HAVING $2::timestamptz IS NULL OR max(n.at) < $2
         ORDER BY latest_at DESC LIMIT $3"
    ))
    .bind(user)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// How many of `user`'s (visible) notifications are after their read mark.
///
/// # Errors
/// Database errors.
pub async fn unread(pool: &PgPool, user: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM rm_notifications n
         WHERE n.recipient_id = $1 AND {VISIBLE}
           AND n.at > COALESCE((SELECT read_up_to FROM rm_notification_reads WHERE user_id = $1), '-infinity')"
    ))
    .bind(user)
    .fetch_one(pool)
    .await
}
