-- Issue 16: the home feed, fanned out on write by the `feed` projector.
-- The projector keeps its own copies of the follow, block and mute edges,
-- the tracks and the reposts (from the same events the graph, tracks and
-- engagement read models use) so that it never waits on another projector
-- and converges in any order (decided 16). Edge rows as in the graph:
-- never deleted, switched by `active`, `seq` = the last sequence of the
-- stream that set them (the duplicate guard).
CREATE TABLE feed_follows
(
    follower_id uuid        NOT NULL,
    followee_id uuid        NOT NULL,
    active      boolean     NOT NULL,
    since       timestamptz NOT NULL,
    seq         bigint      NOT NULL,
    PRIMARY KEY (follower_id, followee_id)
);
CREATE INDEX feed_follows_followee_idx ON feed_follows (followee_id) INCLUDE (follower_id) WHERE active;

CREATE TABLE feed_blocks
(
    blocker_id uuid        NOT NULL,
    blocked_id uuid        NOT NULL,
    active     boolean     NOT NULL,
    since      timestamptz NOT NULL,
    seq        bigint      NOT NULL,
    PRIMARY KEY (blocker_id, blocked_id)
);
CREATE INDEX feed_blocks_blocked_idx ON feed_blocks (blocked_id) INCLUDE (blocker_id) WHERE active;

CREATE TABLE feed_mutes
(
    muter_id uuid        NOT NULL,
    muted_id uuid        NOT NULL,
    active   boolean     NOT NULL,
    since    timestamptz NOT NULL,
    seq      bigint      NOT NULL,
    PRIMARY KEY (muter_id, muted_id)
);

-- One row per author: the follower count (fan-out or not) and whether the
-- author ever passed FEED_FANOUT_MAX_FOLLOWERS (then followers' pages merge
-- the author's not-fanned-out items at read time). The row is also the
-- lock that orders an author's posts, reposts and follows.
CREATE TABLE feed_authors
(
    user_id   uuid    PRIMARY KEY,
    followers bigint  NOT NULL DEFAULT 0 CHECK (followers >= 0),
    large     boolean NOT NULL DEFAULT false
);

-- Tracks as the feed sees them; a deleted or private track's items are
-- removed and never shown.
CREATE TABLE feed_tracks
(
    track_id   uuid        PRIMARY KEY,
    owner_id   uuid        NOT NULL,
    created_at timestamptz NOT NULL,
    title      text        NOT NULL,
    public     boolean     NOT NULL,
    deleted    boolean     NOT NULL DEFAULT false,
    fanned_out boolean     NOT NULL,
    seq        bigint      NOT NULL
);
CREATE INDEX feed_tracks_owner_idx ON feed_tracks (owner_id, created_at DESC, track_id) WHERE public AND NOT deleted;

CREATE TABLE feed_reposts
(
    user_id    uuid        NOT NULL,
    track_id   uuid        NOT NULL,
    active     boolean     NOT NULL,
    since      timestamptz NOT NULL,
    fanned_out boolean     NOT NULL DEFAULT true,
    seq        bigint      NOT NULL,
    PRIMARY KEY (user_id, track_id)
);
CREATE INDEX feed_reposts_user_idx ON feed_reposts (user_id, since DESC, track_id) WHERE active;

-- The fanned-out rows: one per reader, kind, actor and track. `item_id` is
-- md5(kind, actor, track) as a uuid (the cursor's tie-breaker, the same
-- for an item merged at read time).
CREATE TABLE feed_items
(
    user_id  uuid        NOT NULL,
    kind     text        NOT NULL CHECK (kind IN ('post', 'repost')),
    actor_id uuid        NOT NULL,
    track_id uuid        NOT NULL,
    at       timestamptz NOT NULL,
    item_id  uuid        NOT NULL,
    PRIMARY KEY (user_id, item_id)
);
CREATE INDEX feed_items_page_idx ON feed_items (user_id, at DESC, item_id DESC);
CREATE INDEX feed_items_track_idx ON feed_items (track_id, user_id);
CREATE INDEX feed_items_reposts_idx ON feed_items (track_id, user_id) WHERE kind = 'repost';
CREATE INDEX feed_items_actor_idx ON feed_items (actor_id, user_id);

-- Items inserted into a reader's feed since it was last trimmed back to
-- the newest 800 (trimmed once this reaches 80: a feed holds at most 880
-- rows and pages never go past the newest 800).
CREATE TABLE feed_sizes
(
    user_id    uuid   PRIMARY KEY,
    since_trim bigint NOT NULL DEFAULT 0
);

-- An item's id: md5 of kind, actor and track as a uuid.
CREATE FUNCTION feed_item_id(kind text, actor uuid, track uuid) RETURNS uuid
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN md5(kind || ':' || actor::text || ':' || track::text)::uuid;
