-- What the Discord front end needs: more per-guild limits, per-user overrides of every limit,
-- delivery tracking for restart reconciliation, and a Hub link per model.

ALTER TABLE guild_settings ADD COLUMN max_models INTEGER
    CHECK (max_models IS NULL OR max_models >= 0);
ALTER TABLE guild_settings ADD COLUMN max_queued_jobs INTEGER
    CHECK (max_queued_jobs IS NULL OR max_queued_jobs >= 0);

-- Overrides may now set any limit: trainings a month, images a day, models kept, jobs queued.
CREATE TABLE limit_overrides (
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    guild_id    INTEGER NOT NULL DEFAULT 0,
    kind        TEXT NOT NULL CHECK (kind IN ('train', 'images', 'models', 'queued')),
    limit_value INTEGER NOT NULL CHECK (limit_value >= 0),
    PRIMARY KEY (user_id, guild_id, kind)
);
INSERT INTO limit_overrides (user_id, guild_id, kind, limit_value)
    SELECT user_id, guild_id, kind, limit_value FROM quota_overrides;
DROP TABLE quota_overrides;

-- A finished job is delivered once: set after the member was told (restart reconciliation).
ALTER TABLE jobs ADD COLUMN delivered_at TEXT;
CREATE INDEX jobs_undelivered ON jobs(status, delivered_at);
-- Jobs that finished before this migration were dealt with then: never announce them again.
UPDATE jobs SET delivered_at = finished_at WHERE status IN ('succeeded', 'failed', 'cancelled');

ALTER TABLE models ADD COLUMN hub_url TEXT;
