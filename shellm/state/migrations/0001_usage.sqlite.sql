-- The usage ledger: one row per finished request.  IF NOT EXISTS adopts
-- the table that SheLLM versions before the store created.
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    client TEXT NOT NULL,
    provider TEXT,
    model TEXT,
    status INTEGER NOT NULL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    cost_usd REAL,
    duration_ms INTEGER,
    queued_ms INTEGER,
    request_id TEXT
);
CREATE INDEX IF NOT EXISTS usage_by_time ON usage (time);
CREATE INDEX IF NOT EXISTS usage_by_client_time ON usage (client, time);
