-- The challenges read model keeps its duplicate guard in its own rows
-- (Checkpoints::InReadModel, as the social read models do): each row
-- carries the sequence of the last event of its challenge applied, and
-- the projector skips envelopes at or below it. Before, every challenge —
-- one per login — also had a row in projection_checkpoints, locked and
-- stored by two more statements in every projector transaction
-- (issue 14: the statements per login of `serve`).
ALTER TABLE rm_challenges ADD COLUMN sequence bigint NOT NULL DEFAULT 0;

UPDATE rm_challenges c SET sequence = p.sequence
FROM projection_checkpoints p
WHERE p.projector = 'challenges' AND p.aggregate_type = 'otp_challenge'
  AND p.aggregate_id = c.challenge_id::text;

DELETE FROM projection_checkpoints WHERE projector = 'challenges';
