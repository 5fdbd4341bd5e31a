-- Call records keyed by call before owner: a new record's key entry then lands beside the other
-- records its server wrote just before (a server's call ids share a prefix and count up), not
-- on its owner's leaf, which the sync-time index already dirties (docs/performance.md, "The
-- records table keyed by call"). A key on the same columns, so the upserts are unchanged.
ALTER TABLE records DROP CONSTRAINT records_pkey, ADD PRIMARY KEY (app_key, call_id, owner_id);
