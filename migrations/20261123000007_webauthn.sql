-- Passkeys (WebAuthn, issue 4).
--
-- Ceremony state between start and finish: the challenge and options the
-- relying party sent, kept server side (never trusted from the client),
-- short-lived (5 minutes) and consumed once (DELETE … RETURNING). Holds no
-- secret: challenges are public and no private key ever reaches the server.
CREATE TABLE webauthn_ceremonies
(
    ceremony_id uuid        PRIMARY KEY,
    user_id     uuid,                       -- the account, when known at start
    kind        text        NOT NULL,       -- 'registration' | 'authentication' | 'discoverable'
    state       jsonb       NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX webauthn_ceremonies_expiry_idx ON webauthn_ceremonies (expires_at);

-- Set validation (ARCHITECTURE decided 8) for credential ids: a credential
-- is registered to one account only. Claimed before `PasskeyRegistered` is
-- appended, released when the append fails or the passkey is removed.
CREATE TABLE passkey_credentials
(
    credential_id text        PRIMARY KEY,  -- base64url, no padding
    user_id       uuid        NOT NULL,
    claimed_at    timestamptz NOT NULL DEFAULT now()
);
