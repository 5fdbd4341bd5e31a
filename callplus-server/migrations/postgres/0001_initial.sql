-- callplus PostgreSQL schema, version 1: the same tables as the embedded SQLite engine.
-- Text columns use the "C" collation so that ordering (records paged by sync_time, then
-- call_id) is byte order, as in SQLite, whatever the database's locale.

CREATE TABLE apps (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY,
    app_key    TEXT COLLATE "C" PRIMARY KEY,
    app_secret TEXT NOT NULL
);

CREATE TABLE records (
    app_key   TEXT COLLATE "C" NOT NULL,
    owner_id  TEXT COLLATE "C" NOT NULL,
    call_id   TEXT COLLATE "C" NOT NULL,
    sync_time BIGINT NOT NULL,
    body      BYTEA NOT NULL,
    PRIMARY KEY (app_key, owner_id, call_id)
);
CREATE INDEX records_by_time ON records (app_key, owner_id, sync_time);

CREATE TABLE offline_events (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app_key TEXT COLLATE "C" NOT NULL,
    user_id TEXT COLLATE "C" NOT NULL,
    body    BYTEA NOT NULL
);
CREATE INDEX offline_by_user ON offline_events (app_key, user_id, id);

CREATE TABLE active_calls (
    app_key TEXT COLLATE "C" NOT NULL,
    call_id TEXT COLLATE "C" NOT NULL,
    body    BYTEA NOT NULL,
    PRIMARY KEY (app_key, call_id)
);

-- Counters that must survive deletes (the highest sync_time ever stored).
CREATE TABLE meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value BIGINT NOT NULL
);
