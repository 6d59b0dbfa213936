-- REAL is a 4-byte float on PostgreSQL: at today's epoch seconds it can only
-- hold every 128th second, so sessions' and stored responses' times (and the
-- turn lease, busy_until) were rounded by up to a minute. The same columns as
-- every other table's times: 8 bytes.
ALTER TABLE sessions
    ALTER COLUMN created_at TYPE DOUBLE PRECISION,
    ALTER COLUMN updated_at TYPE DOUBLE PRECISION,
    ALTER COLUMN expires_at TYPE DOUBLE PRECISION,
    ALTER COLUMN busy_until TYPE DOUBLE PRECISION;
ALTER TABLE session_turns ALTER COLUMN created_at TYPE DOUBLE PRECISION;
ALTER TABLE responses
    ALTER COLUMN created_at TYPE DOUBLE PRECISION,
    ALTER COLUMN expires_at TYPE DOUBLE PRECISION;
