-- Issue 18: a shadow rebuild's progress and outcome beside the live
-- status (`rebuild_state`: running, done, failed), and a projector parked
-- on a failing event while the others of its runner go on (`parked`).
ALTER TABLE projection_status
    ADD COLUMN rebuild_state       text,
    ADD COLUMN rebuild_done        bigint NOT NULL DEFAULT 0,
    ADD COLUMN rebuild_total       bigint NOT NULL DEFAULT 0,
    ADD COLUMN rebuild_error       text,
    ADD COLUMN rebuild_started_at  timestamptz,
    ADD COLUMN rebuild_finished_at timestamptz,
    ADD COLUMN parked              boolean NOT NULL DEFAULT false;
