-- Per-subject data keys for crypto-shredding (ARCHITECTURE decided 7).
-- wrapped_key = XChaCha20-Poly1305(master wrap key, data key), nonce || ciphertext.
CREATE TABLE subject_keys
(
    subject_id  uuid        PRIMARY KEY,
    wrapped_key bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Set validation (ARCHITECTURE decided 8): a unique keyed hash claimed before
-- the command appends, released if the command fails.
CREATE TABLE reservations
(
    kind       text        NOT NULL,           -- 'email', 'phone', 'username'
    key_hash   bytea       NOT NULL,           -- HMAC-SHA256(lookup key, normalised value)
    owner_id   uuid        NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, key_hash)
);

-- Short-lived outbound messages (OTP codes, notices). The payload is sealed
-- with the delivery key; the notifier deletes the row once sent
-- (ARCHITECTURE decided 6). Never projected, never relayed.
CREATE TABLE deliveries
(
    delivery_id uuid        PRIMARY KEY,
    sealed      bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

-- Read model: profiles. Personal fields stay sealed with the subject key;
-- the api decrypts on read, so erasure shreds the read model too.
CREATE TABLE rm_profiles
(
    user_id        uuid        PRIMARY KEY,
    email_sealed   text        NOT NULL,
    name_sealed    text        NOT NULL,
    bio_sealed     text,
    email_verified boolean     NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);

-- Read model: sessions (one row per refresh-token family).
CREATE TABLE rm_sessions
(
    session_id      uuid        PRIMARY KEY,
    user_id         uuid        NOT NULL,
    status          text        NOT NULL,      -- 'active' | 'revoked'
    generation      bigint      NOT NULL,      -- refresh rotations so far
    created_at      timestamptz NOT NULL,
    last_used_at    timestamptz NOT NULL,
    idle_expires_at timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz,
    revoked_reason  text,
    user_agent      text,
    ip_prefix       text
);
CREATE INDEX rm_sessions_user_idx ON rm_sessions (user_id);
