-- Requests admitted per scope ("global", "client:NAME") and minute, for
-- request-rate limits shared by several nodes.  Only PostgreSQL stores use
-- it; SQLite keeps limits in memory, but the schema is the same on both.
CREATE TABLE IF NOT EXISTS rate_counts (
    scope TEXT NOT NULL,
    minute BIGINT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (scope, minute)
);
