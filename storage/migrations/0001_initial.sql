-- Initial schema. Times are ISO-8601 UTC text; ids of Discord objects are integers.

CREATE TABLE users (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL
);

CREATE TABLE guild_settings (
    guild_id          INTEGER PRIMARY KEY,
    train_per_month   INTEGER CHECK (train_per_month IS NULL OR train_per_month >= 0),
    images_per_day    INTEGER CHECK (images_per_day IS NULL OR images_per_day >= 0),
    allowed_channels  TEXT NOT NULL DEFAULT '[]',
    prompt_blocklist  TEXT NOT NULL DEFAULT '[]',
    banned_users      TEXT NOT NULL DEFAULT '[]',
    updated_at        TEXT NOT NULL
);

-- A per-user override of a quota limit; guild_id 0 means every guild.
CREATE TABLE quota_overrides (
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    guild_id   INTEGER NOT NULL DEFAULT 0,
    kind       TEXT NOT NULL CHECK (kind IN ('train', 'images')),
    limit_value INTEGER NOT NULL CHECK (limit_value >= 0),
    PRIMARY KEY (user_id, guild_id, kind)
);

CREATE TABLE models (
    id          TEXT PRIMARY KEY,
    owner_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    guild_id    INTEGER,
    name        TEXT NOT NULL,
    class_name  TEXT NOT NULL,
    identifier  TEXT NOT NULL,
    preset      TEXT NOT NULL,
    method      TEXT NOT NULL CHECK (method IN ('lora', 'full')),
    blob_key    TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    size_bytes  INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    is_default  INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
    UNIQUE (owner_id, name)
);
CREATE UNIQUE INDEX models_one_default ON models(owner_id) WHERE is_default = 1;

CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('train', 'generate')),
    status       TEXT NOT NULL
                 CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    owner_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    guild_id     INTEGER,
    channel_id   INTEGER,
    message_id   INTEGER,
    params       TEXT NOT NULL DEFAULT '{}',
    arq_job_id   TEXT UNIQUE,
    attempts     INTEGER NOT NULL DEFAULT 0,
    error        TEXT,
    result       TEXT,
    created_at   TEXT NOT NULL,
    started_at   TEXT,
    finished_at  TEXT
);
CREATE INDEX jobs_owner_status ON jobs(owner_id, status);
CREATE INDEX jobs_status_created ON jobs(status, created_at);

-- Quota usage: a row per reservation; its state moves reserved -> committed | refunded, once.
-- `period` is the window it counts against ('2026-11' for monthly, '2026-11-26' for daily).
CREATE TABLE usage_ledger (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    guild_id    INTEGER NOT NULL DEFAULT 0,  -- 0: outside any guild (DM, CLI)
    kind        TEXT NOT NULL CHECK (kind IN ('train', 'images')),
    amount      INTEGER NOT NULL CHECK (amount > 0),
    period      TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('reserved', 'committed', 'refunded')),
    job_id      TEXT REFERENCES jobs(id) ON DELETE SET NULL,
    created_at  TEXT NOT NULL,
    settled_at  TEXT
);
CREATE INDEX usage_ledger_window ON usage_ledger(user_id, guild_id, kind, period, state);

CREATE TABLE consents (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    guild_id      INTEGER,
    subject       TEXT NOT NULL,
    text_version  TEXT NOT NULL,
    created_at    TEXT NOT NULL
);

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id    INTEGER,
    actor_id    INTEGER NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT,
    detail      TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL
);
CREATE INDEX audit_log_guild ON audit_log(guild_id, created_at);
