-- Issue 15: handles, the social graph and tracks.

-- A handle given up stays held by its former owner until `held_until`, so
-- links to it do not move to someone else at once (30 days); a claim takes
-- over a reservation whose hold has passed in the same statement.
ALTER TABLE reservations ADD COLUMN held_until timestamptz;

-- Public handle on the profile (not sealed: usernames are public data).
ALTER TABLE rm_profiles ADD COLUMN username text;
CREATE INDEX rm_profiles_username_idx ON rm_profiles (username);

-- The graph read model: one row per directed edge that ever held. A row is
-- never deleted, only switched off (`active`), and `seq` is the sequence of
-- the relationship stream's event that last set it: an event at or below it
-- is a duplicate (the projector's own duplicate guard, so no checkpoint row
-- per edge; see docs/social.md).
CREATE TABLE rm_follows
(
    follower_id uuid        NOT NULL,
    followee_id uuid        NOT NULL,
    active      boolean     NOT NULL,
    since       timestamptz NOT NULL,
    seq         bigint      NOT NULL,
    PRIMARY KEY (follower_id, followee_id)
);
-- Followers of X / following of X, newest first (keyset pagination).
CREATE INDEX rm_follows_followers_idx ON rm_follows (followee_id, since DESC, follower_id DESC) WHERE active;
CREATE INDEX rm_follows_following_idx ON rm_follows (follower_id, since DESC, followee_id DESC) WHERE active;

CREATE TABLE rm_blocks
(
    blocker_id uuid        NOT NULL,
    blocked_id uuid        NOT NULL,
    active     boolean     NOT NULL,
    since      timestamptz NOT NULL,
    seq        bigint      NOT NULL,
    PRIMARY KEY (blocker_id, blocked_id)
);
CREATE INDEX rm_blocks_blocked_idx ON rm_blocks (blocked_id, blocker_id) WHERE active;
CREATE INDEX rm_blocks_list_idx ON rm_blocks (blocker_id, since DESC, blocked_id DESC) WHERE active;

CREATE TABLE rm_mutes
(
    muter_id uuid        NOT NULL,
    muted_id uuid        NOT NULL,
    active   boolean     NOT NULL,
    since    timestamptz NOT NULL,
    seq      bigint      NOT NULL,
    PRIMARY KEY (muter_id, muted_id)
);

-- Counters, changed only when an edge row switches (same transaction), so
-- they equal COUNT(*) of the active edges and never go negative.
CREATE TABLE rm_user_stats
(
    user_id         uuid   PRIMARY KEY,
    followers_count bigint NOT NULL DEFAULT 0 CHECK (followers_count >= 0),
    following_count bigint NOT NULL DEFAULT 0 CHECK (following_count >= 0)
);

-- Tracks (metadata; audio comes with the media issue). Deleted tracks are
-- dropped. The secret token stays sealed with the owner's key.
CREATE TABLE rm_tracks
(
    track_id            uuid        PRIMARY KEY,
    owner_id            uuid        NOT NULL,
    slug                text        NOT NULL,
    title               text        NOT NULL,
    description         text        NOT NULL,
    genre               text        NOT NULL,
    tags                text[]      NOT NULL,
    duration_ms         bigint      NOT NULL,
    visibility          text        NOT NULL,
    secret_token_sealed text,
    processing          text        NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL
);
CREATE INDEX rm_tracks_owner_idx ON rm_tracks (owner_id, created_at DESC, track_id DESC);
CREATE INDEX rm_tracks_slug_idx ON rm_tracks (owner_id, slug);
