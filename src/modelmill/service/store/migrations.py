"""Ordered, named schema migrations. Append only: never edit or reorder a shipped one.

Each table has an integer `seq` (insertion order, used for stable pagination) and the
OpenAI-style string `id` the API shows. Times are Unix seconds (REAL); JSON columns hold text.
"""

MIGRATIONS: list[tuple[str, str]] = [
    ("0001_files", """
        CREATE TABLE files (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            filename TEXT NOT NULL,          -- the client's name: metadata only, never a path
            purpose TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            status TEXT NOT NULL DEFAULT 'processed',
            created_at REAL NOT NULL,
            expires_at REAL
        );
        CREATE INDEX files_purpose ON files (purpose, seq);
    """),
    ("0002_jobs", """
        CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            model TEXT NOT NULL,              -- as requested (a base name or an ft: model)
            base_model TEXT NOT NULL,         -- the resolved base model
            init_adapter TEXT,                -- adapter dir to continue from (ft: model), or NULL
            training_file TEXT NOT NULL,
            validation_file TEXT,
            suffix TEXT,
            seed INTEGER NOT NULL,
            metadata TEXT,                    -- JSON object or NULL
            integrations TEXT,                -- JSON list or NULL (accepted, echoed, not used)
            method_type TEXT NOT NULL,        -- "supervised" | ...
            hyperparameters TEXT NOT NULL,    -- JSON: as requested, then as resolved by the worker
            hyperparameters_resolved INTEGER NOT NULL DEFAULT 0,
            ft_name TEXT NOT NULL UNIQUE,     -- the fine_tuned_model name it will get on success
            status TEXT NOT NULL,
            requested_action TEXT,            -- NULL | 'cancel' | 'pause': asked of the lease holder
            error TEXT,                       -- JSON {code, message, param} or NULL
            fine_tuned_model TEXT,            -- set on success
            adapter_dir TEXT,                 -- final adapter dir, set on success
            model_deleted_at REAL,            -- DELETE /v1/models/{ft model}
            finished_at REAL,
            started_at REAL,
            trained_tokens INTEGER,
            total_steps INTEGER,
            step INTEGER,
            estimated_finish REAL,
            result_files TEXT NOT NULL DEFAULT '[]',
            -- the lease: who may write this job's state, until when, under which fencing token
            lease_owner TEXT,
            lease_token INTEGER NOT NULL DEFAULT 0,
            lease_expires_at REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        );
        CREATE INDEX jobs_claim ON jobs (status, seq);
        CREATE INDEX jobs_fine_tuned_model ON jobs (fine_tuned_model);
    """),
    ("0003_events", """
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            created_at REAL NOT NULL,
            level TEXT NOT NULL,              -- info | warn | error
            type TEXT NOT NULL,               -- message | metrics
            message TEXT NOT NULL,
            data TEXT                         -- JSON object or NULL
        );
        CREATE INDEX events_job ON events (job_id, seq);
    """),
    ("0004_checkpoints", """
        CREATE TABLE checkpoints (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            created_at REAL NOT NULL,
            step_number INTEGER NOT NULL,
            metrics TEXT NOT NULL,            -- JSON object
            path TEXT NOT NULL,               -- adapter dir on disk
            fine_tuned_model_checkpoint TEXT NOT NULL UNIQUE,
            UNIQUE (job_id, step_number)
        );
    """),
    ("0005_api_keys", """
        CREATE TABLE api_keys (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            prefix TEXT NOT NULL,             -- first characters of the key, for humans to tell keys apart
            key_hash TEXT NOT NULL,           -- hex sha256 of the key (keys are 256-bit random tokens)
            created_at REAL NOT NULL,
            last_used_at REAL
        );
    """),
    ("0006_jobs_reclaims", """
        -- claims of a job whose previous worker died mid-run (lease expired while running);
        -- a job that keeps killing its workers is failed instead of being retried forever
        ALTER TABLE jobs ADD COLUMN reclaims INTEGER NOT NULL DEFAULT 0;
    """),
    ("0007_jobs_grader", """
        -- the reinforcement method's grader (JSON object, validated at create time), NULL for other methods
        ALTER TABLE jobs ADD COLUMN grader TEXT;
    """),
]
