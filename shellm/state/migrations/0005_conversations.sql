-- Conversations kept by the gateway (issue 17): SheLLM sessions and their
-- turns, and stored OpenAI Responses chained by previous_response_id.
-- Every row belongs to one client (the key's name) and expires when idle.
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    client TEXT NOT NULL,
    model TEXT,
    system TEXT,
    metadata TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    turns INTEGER NOT NULL,
    chars BIGINT NOT NULL,
    -- The lease of the turn under way (one at a time, on any node).
    busy_until REAL
);
CREATE INDEX IF NOT EXISTS sessions_by_client ON sessions (client, created_at);
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires_at);
-- One row per completed exchange: the user's prompt and the answer.
CREATE TABLE IF NOT EXISTS session_turns (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    answer TEXT NOT NULL,
    model TEXT,
    provider TEXT,
    input_tokens INTEGER,
    output_tokens INTEGER,
    created_at REAL NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    client TEXT NOT NULL,
    previous_id TEXT,
    model TEXT NOT NULL,
    instructions TEXT,
    -- The input items as text turns: JSON [{"role": ..., "text": ...}].
    input TEXT NOT NULL,
    output TEXT NOT NULL,
    provider TEXT,
    input_tokens INTEGER,
    output_tokens INTEGER,
    metadata TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_expiry ON responses (expires_at);
