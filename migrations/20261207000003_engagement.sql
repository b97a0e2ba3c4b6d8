-- Issue 16: likes, reposts and comments. Edge rows as in the graph (never
-- deleted, switched by `active`, `seq` = the sequence of the stream's event
-- that last set them: the projector's own duplicate guard).
CREATE TABLE rm_likes
(
    user_id  uuid        NOT NULL,
    track_id uuid        NOT NULL,
    active   boolean     NOT NULL,
    since    timestamptz NOT NULL,
    seq      bigint      NOT NULL,
    PRIMARY KEY (user_id, track_id)
);
CREATE INDEX rm_likes_track_idx ON rm_likes (track_id, since DESC, user_id DESC) WHERE active;
CREATE INDEX rm_likes_user_idx ON rm_likes (user_id, since DESC, track_id DESC) WHERE active;

CREATE TABLE rm_reposts
(
    user_id  uuid        NOT NULL,
    track_id uuid        NOT NULL,
    active   boolean     NOT NULL,
    since    timestamptz NOT NULL,
    seq      bigint      NOT NULL,
    PRIMARY KEY (user_id, track_id)
);
CREATE INDEX rm_reposts_user_idx ON rm_reposts (user_id, since DESC, track_id DESC) WHERE active;

-- Comments; a deleted one keeps its row (replies stay) without its body.
CREATE TABLE rm_comments
(
    comment_id   uuid        PRIMARY KEY,
    track_id     uuid        NOT NULL,
    author_id    uuid        NOT NULL,
    body         text,
    timestamp_ms bigint,
    reply_to     uuid,
    posted_at    timestamptz NOT NULL,
    deleted      boolean     NOT NULL DEFAULT false,
    seq          bigint      NOT NULL
);
CREATE INDEX rm_comments_newest_idx ON rm_comments (track_id, posted_at DESC, comment_id DESC);
CREATE INDEX rm_comments_timestamp_idx ON rm_comments (track_id, timestamp_ms, posted_at, comment_id);

-- Counters, moved only when an edge or comment switches, in the same
-- transaction: equal to their sets, never negative.
CREATE TABLE rm_track_stats
(
    track_id       uuid   PRIMARY KEY,
    likes_count    bigint NOT NULL DEFAULT 0 CHECK (likes_count >= 0),
    reposts_count  bigint NOT NULL DEFAULT 0 CHECK (reposts_count >= 0),
    comments_count bigint NOT NULL DEFAULT 0 CHECK (comments_count >= 0)
);
CREATE TABLE rm_user_likes
(
    user_id     uuid   PRIMARY KEY,
    likes_count bigint NOT NULL DEFAULT 0 CHECK (likes_count >= 0)
);

-- Notifications: one row per event that notifies someone (keyed by the
-- event id: a duplicate inserts nothing), grouped when read.
CREATE TABLE rm_notifications
(
    event_id     uuid        PRIMARY KEY,
    recipient_id uuid        NOT NULL,
    kind         text        NOT NULL,      -- follow | like | repost | comment | reply
    actor_id     uuid        NOT NULL,
    track_id     uuid,
    comment_id   uuid,
    at           timestamptz NOT NULL,
    stream_type  text        NOT NULL,
    stream_id    text        NOT NULL,
    seq          bigint      NOT NULL
);
CREATE INDEX rm_notifications_recipient_idx ON rm_notifications (recipient_id, at DESC);
CREATE INDEX rm_notifications_stream_idx ON rm_notifications (stream_type, stream_id, seq);

CREATE TABLE rm_notification_reads
(
    user_id    uuid        PRIMARY KEY,
    read_up_to timestamptz NOT NULL,
    seq        bigint      NOT NULL
);
