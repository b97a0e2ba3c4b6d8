-- Durable delivery (issue 3 "Channels"): the notifier's retry state on each
-- sealed delivery record. A record is claimed by bumping `attempts` and
-- pushing `next_attempt_at` past a lease, so a crash mid-send makes it due
-- again instead of losing it, and several notifiers never send it together.
--
-- attempts        sends started so far (0 = its event was not handled yet)
-- next_attempt_at when the retry loop may claim it again
-- last_error      secret-free reason of the last failure (status codes only,
--                 never a recipient or a body)
-- source_type     aggregate type of the event that asked for it, e.g.
-- source_id       `otp_challenge` + the challenge id: where the outcome
--                 (OtpDelivered / OtpDeliveryFailed) is recorded
-- source_sequence that event's sequence: a later code of the same challenge
--                 (resend) supersedes the records of earlier ones
ALTER TABLE deliveries
    ADD COLUMN attempts        int         NOT NULL DEFAULT 0,
    ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN last_error      text,
    ADD COLUMN source_type     text,
    ADD COLUMN source_id       text,
    ADD COLUMN source_sequence bigint;

-- The retry loop's scan: due records whose first attempt already ran.
CREATE INDEX deliveries_next_attempt_idx ON deliveries (next_attempt_at) WHERE attempts > 0;
-- Superseding a challenge's older codes.
CREATE INDEX deliveries_source_idx ON deliveries (source_id) WHERE source_id IS NOT NULL;

-- Read model: one-time-code challenges, as a client may see them
-- (GET /api/auth/challenges/{id}). Never the recipient, never the code.
CREATE TABLE rm_challenges
(
    challenge_id   uuid        PRIMARY KEY,
    purpose        text        NOT NULL,      -- email_verification | two_factor | login | password_reset
    channel        text        NOT NULL,      -- email | sms
    status         text        NOT NULL,      -- pending | verified | locked
    delivery       text        NOT NULL,      -- pending | delivered | failed
    delivery_error text,                      -- secret-free reason when failed
    expires_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);
