-- Admin API nonces, kept until their request could no longer be accepted, so a signed request
-- replayed after a restart is refused.
CREATE TABLE admin_nonces (
    app_key   TEXT COLLATE "C" NOT NULL,
    nonce     TEXT COLLATE "C" NOT NULL,
    forget_at BIGINT NOT NULL,
    PRIMARY KEY (app_key, nonce)
);
CREATE INDEX admin_nonces_by_age ON admin_nonces (forget_at);
