"""Ordered, named schema migrations. Append only: never edit or reorder a shipped one.

Each table has an integer `seq` (insertion order, used for stable pagination) and the
OpenAI-style string `id` the API shows. Times are Unix seconds (REAL); JSON columns hold text.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# The lease columns a queue table ends with (eval_runs, webhook_deliveries, batches; jobs predates
# `reclaims`): the owner, its fencing token and expiry, attempts and reclaims (store/queue.py). One text,
# concatenated into each table's migration, so the tables cannot drift apart; the SQL each migration
# runs is unchanged by it.
_LEASE_QUEUE_COLUMNS = """\
            lease_owner TEXT,
            lease_token INTEGER NOT NULL DEFAULT 0,
            lease_expires_at REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            reclaims INTEGER NOT NULL DEFAULT 0
        );"""

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
    ("0008_evals", """
        CREATE TABLE evals (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            metadata TEXT,                    -- JSON object or NULL
            data_source_config TEXT NOT NULL, -- JSON: {type: custom, item_schema, include_sample_schema}
            testing_criteria TEXT NOT NULL    -- JSON list of validated graders (names unique)
        );
        CREATE TABLE eval_runs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            eval_id TEXT NOT NULL REFERENCES evals (id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            created_at REAL NOT NULL,
            metadata TEXT,
            model TEXT,                       -- the sampled model (completions), NULL for jsonl
            data_source TEXT NOT NULL,        -- JSON, as requested (inline content kept)
            status TEXT NOT NULL,             -- queued | in_progress | completed | failed | canceled
            requested_action TEXT,            -- NULL | 'cancel': asked of the lease holder
            error TEXT,                       -- JSON {code, message} or NULL
            total_items INTEGER,              -- items in the data source, once the worker has read it
            result_counts TEXT NOT NULL,      -- JSON {total, errored, failed, passed}
            per_testing_criteria_results TEXT NOT NULL,  -- JSON [{testing_criteria, passed, failed}]
            per_model_usage TEXT NOT NULL,    -- JSON [{model_name, invocation_count, ...tokens}]
            job_id TEXT,                      -- the fine-tuning job whose before/after report made it
            job_label TEXT,                   -- base | final | step N (job runs only)
            started_at REAL,
            finished_at REAL,
            updated_at REAL NOT NULL,
            -- the lease, as on jobs: owner, fencing token, expiry
""" + _LEASE_QUEUE_COLUMNS + """
        CREATE INDEX eval_runs_eval ON eval_runs (eval_id, seq);
        CREATE INDEX eval_runs_claim ON eval_runs (status, seq);
        CREATE INDEX eval_runs_job ON eval_runs (job_id);
        CREATE TABLE eval_output_items (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            run_id TEXT NOT NULL REFERENCES eval_runs (id) ON DELETE CASCADE,
            eval_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            datasource_item_id INTEGER NOT NULL,  -- 0-based index of the item in the data source
            status TEXT NOT NULL,                 -- pass | fail | error
            datasource_item TEXT NOT NULL,        -- JSON object
            results TEXT NOT NULL,                -- JSON list of EvalRunOutputItemResult
            sample TEXT NOT NULL,                 -- JSON: the sample object of EvalRunOutputItem
            UNIQUE (run_id, datasource_item_id)
        );
        CREATE INDEX eval_output_items_run ON eval_output_items (run_id, seq);
    """),
    ("0009_projects", """
        -- Tenancy: every API key belongs to a project, and so does every file, job, eval and eval
        -- run (checkpoints, fine-tuned models, events and output items belong to their job or run).
        -- Rows from before projects existed move into the default project.
        CREATE TABLE projects (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,          -- proj_...
            name TEXT NOT NULL UNIQUE,        -- what `modelmill keys create --project NAME` names
            created_at REAL NOT NULL
        );
        INSERT INTO projects (id, name, created_at)
            VALUES ('proj_default', 'default', CAST(strftime('%s', 'now') AS REAL));
        ALTER TABLE api_keys ADD COLUMN project_id TEXT NOT NULL DEFAULT 'proj_default';
        ALTER TABLE files ADD COLUMN project_id TEXT NOT NULL DEFAULT 'proj_default';
        ALTER TABLE jobs ADD COLUMN project_id TEXT NOT NULL DEFAULT 'proj_default';
        ALTER TABLE evals ADD COLUMN project_id TEXT NOT NULL DEFAULT 'proj_default';
        ALTER TABLE eval_runs ADD COLUMN project_id TEXT NOT NULL DEFAULT 'proj_default';
        CREATE INDEX files_project ON files (project_id, seq);
        CREATE INDEX jobs_project ON jobs (project_id, seq);
        CREATE INDEX evals_project ON evals (project_id, seq);
        CREATE INDEX eval_runs_project ON eval_runs (project_id, seq);
        -- A fine-tuned model or checkpoint shared with another project (OpenAI's checkpoint permissions).
        -- `model` is the shared name, `job_id` the job that made it (its project owns the permission).
        CREATE TABLE checkpoint_permissions (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,          -- cp_...
            model TEXT NOT NULL,
            job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
            created_at REAL NOT NULL,
            UNIQUE (model, project_id)
        );
        CREATE INDEX checkpoint_permissions_project ON checkpoint_permissions (project_id, model);
    """),
    ("0010_adapter_manifests", """
        -- What the platform wrote into each adapter or checkpoint directory: a sha256 per file,
        -- recorded when the directory is published and checked before anything loads or resumes it.
        CREATE TABLE adapter_manifests (
            path TEXT PRIMARY KEY,            -- the directory, absolute, under the jobs directory
            job_id TEXT NOT NULL,
            files TEXT NOT NULL,              -- JSON object: relative file path -> hex sha256
            created_at REAL NOT NULL
        );
        CREATE INDEX adapter_manifests_job ON adapter_manifests (job_id);
    """),
    ("0011_login_sessions", """
        -- The dashboard's sign-ins: the cookie holds a random token (only its sha256 is stored here),
        -- never the API key. Revoking the key deletes its sessions, and an idle one expires (auth.py).
        CREATE TABLE login_sessions (
            token_hash TEXT PRIMARY KEY,      -- hex sha256 of the cookie's token (256-bit random)
            key_id TEXT NOT NULL,             -- the api_keys row it signed in with
            project_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            last_used_at REAL NOT NULL        -- idle expiry counts from here
        );
        CREATE INDEX login_sessions_key ON login_sessions (key_id);
    """),
    ("0012_stored_completions_responses", """
        -- Chat completions made with store: true, and Responses (stored unless store: false), per
        -- project (store/stored.py). The wire object is kept as returned, and model, metadata and
        -- created_at are columns because lists and eval data sources filter on them.
        CREATE TABLE stored_completions (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,          -- chatcmpl-...
            project_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            model TEXT NOT NULL,
            metadata TEXT,                    -- JSON object or NULL
            request TEXT NOT NULL,            -- JSON: the request's messages, tools and sampling fields
            completion TEXT NOT NULL          -- JSON: the chat.completion object returned
        );
        CREATE INDEX stored_completions_project ON stored_completions (project_id, seq);
        CREATE TABLE responses (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,          -- resp_...
            project_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            model TEXT NOT NULL,
            metadata TEXT,                    -- JSON object or NULL
            previous_response_id TEXT,
            instructions TEXT,
            input_items TEXT NOT NULL,        -- JSON list: this request's input items, with ids
            history TEXT NOT NULL,            -- JSON list: the conversation's chat messages, output included
            response TEXT NOT NULL            -- JSON: the response object returned
        );
        CREATE INDEX responses_project ON responses (project_id, seq);
    """),
    ("0013_webhooks", """
        -- Webhooks (store/webhooks.py): endpoints per project, an outbox of events written in the
        -- same transaction as the state change they announce, one delivery per (event, endpoint)
        -- claimed on the lease queue (store/webhook_queue.py), and every attempt made.
        CREATE TABLE webhook_endpoints (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,          -- whep_...
            project_id TEXT NOT NULL,
            url TEXT NOT NULL,
            events TEXT,                      -- JSON list of event types, NULL = every event
            secret TEXT NOT NULL,             -- whsec_... kept as is: signing needs the key itself
            created_at REAL NOT NULL
        );
        CREATE INDEX webhook_endpoints_project ON webhook_endpoints (project_id, seq);
        CREATE TABLE webhook_events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,          -- evt_...
            project_id TEXT NOT NULL,
            type TEXT NOT NULL,               -- fine_tuning.job.succeeded, eval.run.failed, batch.completed...
            created_at REAL NOT NULL,
            payload TEXT NOT NULL             -- JSON: the event body, byte for byte as delivered
        );
        CREATE TABLE webhook_deliveries (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,          -- whdel_...
            event_id TEXT NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
            endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
            project_id TEXT NOT NULL,
            status TEXT NOT NULL,             -- pending | sending | delivered | failed
            requested_action TEXT,            -- unused by deliveries (a lease queue column)
            next_attempt_at REAL NOT NULL,    -- not claimed before this time (the retry backoff)
            last_status_code INTEGER,         -- HTTP status of the newest attempt, NULL if none answered
            last_error TEXT,                  -- why the newest attempt failed, NULL on success
            created_at REAL NOT NULL,
            finished_at REAL,
            updated_at REAL NOT NULL,
""" + _LEASE_QUEUE_COLUMNS + """
        CREATE INDEX webhook_deliveries_claim ON webhook_deliveries (status, next_attempt_at, seq);
        CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, seq);
        CREATE TABLE webhook_attempts (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
            started_at REAL NOT NULL,
            duration_ms INTEGER NOT NULL,
            status_code INTEGER,              -- NULL when no HTTP answer came (refused, timeout)
            error TEXT                        -- NULL on a 2xx
        );
        CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, seq);
    """),
    ("0014_uploads", """
        -- The Uploads API (store/uploads.py): a file sent as parts, assembled into a `files` row on
        -- completion. Part blobs live at files_dir/.uploads/<upload id>/<part id> until the upload
        -- completes, is cancelled or expires, and are removed then (the upload rows stay).
        CREATE TABLE uploads (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,          -- upload_...
            project_id TEXT NOT NULL,
            filename TEXT NOT NULL,           -- the client's name: metadata only, never a path
            purpose TEXT NOT NULL,
            bytes INTEGER NOT NULL,           -- what the client declared: the parts must sum to it
            mime_type TEXT NOT NULL,
            file_expires_after INTEGER,       -- expires_after.seconds for the File made, or NULL: kept
            status TEXT NOT NULL,             -- pending | completed | cancelled | expired
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,         -- a pending upload past this is expired
            file_id TEXT                      -- the File made on completion
        );
        CREATE INDEX uploads_project ON uploads (project_id, seq);
        CREATE INDEX uploads_pending ON uploads (status, expires_at);
        CREATE TABLE upload_parts (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,          -- part_...
            upload_id TEXT NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
            bytes INTEGER NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE INDEX upload_parts_upload ON upload_parts (upload_id, seq);
    """),
    ("0015_batches", """
        -- The Batch API (store/batches.py): a batch is background work on the lease queue, like jobs
        -- and eval runs. batch_results holds each answered input line, written fenced with the
        -- batch's counters, so a reclaimed batch skips them and no line is answered twice.
        CREATE TABLE batches (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,          -- batch_...
            project_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            endpoint TEXT NOT NULL,           -- /v1/chat/completions | /v1/responses
            model TEXT,                       -- the model every line names, NULL when they differ
            input_file_id TEXT NOT NULL,
            completion_window TEXT NOT NULL,  -- 24h
            metadata TEXT,                    -- JSON object or NULL
            output_expires_after INTEGER,     -- seconds the output/error files are kept, NULL: until deleted
            status TEXT NOT NULL,             -- validating | in_progress | finalizing | completed | failed
                                              -- | expired | cancelling | cancelled
            requested_action TEXT,            -- NULL | 'cancel': asked of the lease holder
            errors TEXT,                      -- JSON list of BatchError, or NULL
            output_file_id TEXT,
            error_file_id TEXT,
            total INTEGER NOT NULL,           -- request counts
            completed INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            expires_at REAL NOT NULL,         -- created_at + the completion window
            in_progress_at REAL,
            finalizing_at REAL,
            completed_at REAL,
            failed_at REAL,
            expired_at REAL,
            cancelling_at REAL,
            cancelled_at REAL,
            finished_at REAL,
            updated_at REAL NOT NULL,
            -- the lease, as on jobs: owner, fencing token, expiry
""" + _LEASE_QUEUE_COLUMNS + """
        CREATE INDEX batches_claim ON batches (status, seq);
        CREATE INDEX batches_project ON batches (project_id, seq);
        CREATE TABLE batch_results (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            batch_id TEXT NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
            line INTEGER NOT NULL,            -- 1-based line number in the input file
            custom_id TEXT NOT NULL,
            ok INTEGER NOT NULL,              -- 1: an output-file line (HTTP 200), 0: an error-file line
            result TEXT NOT NULL,             -- JSON: the output line, as written to the file
            created_at REAL NOT NULL,
            UNIQUE (batch_id, line)
        );
    """),
    ("0016_jobs_environment", """
        -- agentic RFT: method.reinforcement.environment (JSON object, validated at create time), NULL otherwise
        ALTER TABLE jobs ADD COLUMN environment TEXT;
    """),
]


def apply_pending(c, migrations: list[tuple[str, str]], run_script: Callable[[str, str], None]) -> list[str]:
    """SQLite's and Postgres's migrate(), on connection `c` inside their transaction (schema_migrations
    exists): run_script(name, sql) for each of `migrations` (MIGRATIONS; a test passes fewer) not
    recorded yet, in order, then record it. Returns the names applied."""
    done = {r["name"] for r in c.execute("SELECT name FROM schema_migrations")}
    applied = []
    for name, sql in migrations:
        if name not in done:
            run_script(name, sql)
            c.execute("INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))
            applied.append(name)
    return applied
