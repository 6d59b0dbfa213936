-- Prompt templates (issue 18): each save of a name is a new version, never
-- changed afterwards.  template_names keeps the last number given, so a
-- number never names two texts, even after versions are deleted.
CREATE TABLE IF NOT EXISTS template_names (
    name TEXT PRIMARY KEY,
    last_version INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS template_versions (
    name TEXT NOT NULL REFERENCES template_names (name),
    version INTEGER NOT NULL,
    template TEXT NOT NULL,
    system TEXT,
    -- The variables it uses: JSON ["name", ...], in order of first use.
    variables TEXT NOT NULL,
    description TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    created_by TEXT,
    PRIMARY KEY (name, version)
);
-- The request log names the template a request used (name@version).
ALTER TABLE usage ADD COLUMN template TEXT;
