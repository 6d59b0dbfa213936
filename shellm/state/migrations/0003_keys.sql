-- Client keys made by an administrator, stored only as an HMAC of the key
-- (hex), with the previous one during a rotation's grace period.  Limits,
-- budgets and usage follow the id, never the key.  Revoked rows stay.
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    prev_hash TEXT,
    prev_valid_until DOUBLE PRECISION,
    models TEXT,
    rpm INTEGER NOT NULL,
    daily_tokens BIGINT,
    monthly_tokens BIGINT,
    expires_at DOUBLE PRECISION,
    note TEXT,
    admin INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION
);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_live_name ON api_keys (name) WHERE revoked_at IS NULL;
-- Who did what to which key, and when; never a key.
CREATE TABLE IF NOT EXISTS audit_log (
    at DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    key_id TEXT,
    details TEXT
);
CREATE INDEX IF NOT EXISTS audit_log_by_time ON audit_log (at);
-- The ledger grows into the request log.
ALTER TABLE usage ADD COLUMN key_id TEXT;
ALTER TABLE usage ADD COLUMN endpoint TEXT;
ALTER TABLE usage ADD COLUMN error_code TEXT;
ALTER TABLE usage ADD COLUMN fallback TEXT;
-- Only with SHELLM_LOG_BODIES=1, capped; NULL otherwise.
ALTER TABLE usage ADD COLUMN prompt_text TEXT;
ALTER TABLE usage ADD COLUMN answer_text TEXT;
CREATE INDEX IF NOT EXISTS usage_by_key_time ON usage (key_id, time);
