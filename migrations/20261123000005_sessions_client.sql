-- Sessions carry the sealed client description (device id and label, user
-- agent, IP prefix) and the time of the last authentication (step-up).
ALTER TABLE rm_sessions ADD COLUMN client_sealed text;
ALTER TABLE rm_sessions ADD COLUMN authenticated_at timestamptz;
UPDATE rm_sessions SET authenticated_at = created_at;
