-- Issue 17: what a moderation notice says (the action, the reason, the
-- end of a suspension; never who acted).
ALTER TABLE rm_notifications ADD COLUMN detail jsonb;
