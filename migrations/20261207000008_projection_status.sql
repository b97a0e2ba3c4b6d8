-- Issue 18: each projector's progress as its runner last saw it (the
-- admin status page): the position and time of the last event applied,
-- events applied, a smoothed rate, and the failure it is stuck on.
CREATE TABLE projection_status
(
    projector     text             PRIMARY KEY,
    position      bigint,
    last_event_at timestamptz,
    applied       bigint           NOT NULL DEFAULT 0,
    rate          double precision NOT NULL DEFAULT 0,
    state         text             NOT NULL DEFAULT 'live',
    error         text,
    failed_event  text,
    updated_at    timestamptz      NOT NULL DEFAULT now()
);
