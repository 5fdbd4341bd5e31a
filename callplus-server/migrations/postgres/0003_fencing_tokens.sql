-- The fencing token of a call's owner on what it writes about the call: a write with a smaller
-- token than the stored row's changes nothing, so an owner that paused past its loss cannot
-- overwrite what the node that took the call over wrote (docs/architecture.md, "Fencing").
ALTER TABLE records ADD COLUMN fence BIGINT NOT NULL DEFAULT 0;
ALTER TABLE active_calls ADD COLUMN fence BIGINT NOT NULL DEFAULT 0;
