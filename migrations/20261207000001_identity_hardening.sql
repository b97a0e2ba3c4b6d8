-- Issue 14: a phone number is reserved only once verified. Reservations made
-- for numbers that were added but never verified (the account-takeover path)
-- are released: kept are numbers an account signed up with, and numbers whose
-- PhoneAdded challenge was answered by a PhoneVerified of the same account.
DELETE FROM reservations r
 WHERE r.kind = 'phone'
   AND NOT EXISTS (
       SELECT 1 FROM events e
        WHERE e.aggregate_type = 'user' AND e.aggregate_id = r.owner_id::text
          AND e.event_type = 'UserRegisteredWithPhone'
          AND e.payload -> 'UserRegisteredWithPhone' ->> 'phone_hash' = encode(r.key_hash, 'hex'))
   AND NOT EXISTS (
       SELECT 1 FROM events a
         JOIN events v ON v.aggregate_type = 'user' AND v.aggregate_id = a.aggregate_id
                      AND v.event_type = 'PhoneVerified'
                      AND v.payload -> 'PhoneVerified' ->> 'challenge_id' = a.payload -> 'PhoneAdded' ->> 'challenge_id'
        WHERE a.aggregate_type = 'user' AND a.aggregate_id = r.owner_id::text
          AND a.event_type = 'PhoneAdded'
          AND a.payload -> 'PhoneAdded' ->> 'phone_hash' = encode(r.key_hash, 'hex'));

-- Issue 14 / ARCHITECTURE decided 14: "every session of this user started
-- before T is revoked", written by the same statement as the user's
-- AllSessionsRevoked event; refresh, step-up and the bearer check's fallback
-- read it, whatever the sessions read model holds.
CREATE TABLE session_cutoffs (
    user_id        uuid        PRIMARY KEY,
    revoked_before timestamptz NOT NULL
);

-- Issue 14: SMS budgets per clock hour (SMS_HOURLY_BUDGET: bucket 'global';
-- SMS_COUNTRY_HOURLY_BUDGET: bucket 'country:<calling code>').
CREATE TABLE sms_budget (
    bucket text        NOT NULL,
    hour   timestamptz NOT NULL,
    sent   integer     NOT NULL,
    PRIMARY KEY (bucket, hour)
);

-- Issue 14: unverified registrations expire after 24 h; the expiry job finds
-- them here (the user aggregate decides).
CREATE INDEX rm_profiles_unverified ON rm_profiles (created_at) WHERE NOT email_verified;
