-- Issue 17: moderation. Reports, the current state per subject (read-side
-- filters: hidden tracks, removed comments, suspended accounts) and the
-- audit trail of moderation and admin actions. Decisions (login refused,
-- a hidden track's page) read the `moderation` streams themselves.
CREATE TABLE rm_reports
(
    report_id    uuid        PRIMARY KEY,
    subject_type text        NOT NULL,
    subject_id   uuid        NOT NULL,
    reporter_id  uuid        NOT NULL,
    reason       text        NOT NULL,
    state        text        NOT NULL,
    filed_at     timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX rm_reports_subject_idx ON rm_reports (subject_type, subject_id);
CREATE INDEX rm_reports_state_idx ON rm_reports (state, filed_at DESC);

CREATE TABLE rm_moderation_state
(
    subject_type    text        NOT NULL,
    subject_id      uuid        NOT NULL,
    hidden          boolean     NOT NULL DEFAULT false,
    comment_removed boolean     NOT NULL DEFAULT false,
    suspended_until timestamptz,
    PRIMARY KEY (subject_type, subject_id)
);

-- One row per moderation action, role change, grant and refused request.
CREATE TABLE rm_moderation_audit
(
    entry_id     uuid        PRIMARY KEY,
    action       text        NOT NULL,
    subject_type text,
    subject_id   text,
    actor_id     uuid,
    actor_roles  text[]      NOT NULL,
    reason       text,
    report_ids   uuid[]      NOT NULL,
    until        timestamptz,
    at           timestamptz NOT NULL
);
CREATE INDEX rm_moderation_audit_at_idx ON rm_moderation_audit (at DESC, entry_id DESC);
CREATE INDEX rm_moderation_audit_subject_idx ON rm_moderation_audit (subject_type, subject_id, at DESC);
CREATE INDEX rm_moderation_audit_actor_idx ON rm_moderation_audit (actor_id, at DESC);
