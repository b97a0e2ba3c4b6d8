-- Read models of the strong factors (issue 4). Filled by the passkeys and
-- device-PIN projectors; only public keys and status, never secrets.
CREATE TABLE rm_passkeys
(
    credential_id text        PRIMARY KEY,  -- base64url
    user_id       uuid        NOT NULL,
    label         text,
    created_at    timestamptz NOT NULL,
    last_used_at  timestamptz
);
CREATE INDEX rm_passkeys_user_idx ON rm_passkeys (user_id);

CREATE TABLE rm_device_pins
(
    user_id    uuid        NOT NULL,
    device_id  text        NOT NULL,
    status     text        NOT NULL,        -- 'enabled' | 'disabled'
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
