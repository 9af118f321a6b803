-- Exports, their queue jobs, the merged profiles and the per-tenant rate limiter.

CREATE TABLE exports (
    id               uuid PRIMARY KEY,              -- uuid v7: sortable, used for keyset listing
    tenant           text NOT NULL,
    request          jsonb NOT NULL,                -- the normalised create body
    request_hash     text NOT NULL,
    idempotency_key  text,
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    stage            text NOT NULL DEFAULT 'queued'
                     CHECK (stage IN ('queued', 'creating_job', 'waiting_for_job', 'downloading', 'enriching', 'finished')),
    stage_started_at timestamptz,
    auth0_job_id     text,
    job_percent_done integer,                       -- the Auth0 job's own progress while we wait
    auth0_jobs_created integer NOT NULL DEFAULT 0,  -- bounded: a failed/expired Auth0 job is replaced at most twice
    users_total      bigint,
    users_downloaded bigint NOT NULL DEFAULT 0,
    users_enriched   bigint NOT NULL DEFAULT 0,
    api_calls        bigint NOT NULL DEFAULT 0,
    rate_limited     bigint NOT NULL DEFAULT 0,
    retries          bigint NOT NULL DEFAULT 0,
    roles_strategy   text,                          -- 'by_role' | 'per_user', chosen by estimated call count
    roles_fetched    boolean NOT NULL DEFAULT false,
    enrich_started_at timestamptz,
    error            jsonb,
    cancel_requested boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    UNIQUE (idempotency_key)                        -- a key names one request, whatever its tenant
);
CREATE INDEX exports_status_id ON exports (status, id DESC);
CREATE INDEX exports_tenant_id ON exports (tenant, id DESC);

CREATE TABLE queue_jobs (
    id               bigserial PRIMARY KEY,
    export_id        uuid NOT NULL REFERENCES exports (id) ON DELETE CASCADE,
    kind             text NOT NULL CHECK (kind IN ('create_job', 'wait_job', 'download', 'enrich', 'finalize')),
    args             jsonb NOT NULL DEFAULT '{}',
    state            text NOT NULL DEFAULT 'available'
                     CHECK (state IN ('available', 'running', 'retryable', 'completed', 'cancelled', 'discarded')),
    attempt          integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 10,
    run_at           timestamptz NOT NULL DEFAULT now(),
    lease_expires_at timestamptz,
    locked_by        text,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE INDEX queue_jobs_claimable ON queue_jobs (run_at, id) WHERE state IN ('available', 'retryable');
CREATE INDEX queue_jobs_running ON queue_jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX queue_jobs_export ON queue_jobs (export_id);
-- At most one unfinished job per export: the pipeline is a single chain of stages.
CREATE UNIQUE INDEX queue_jobs_one_active ON queue_jobs (export_id)
    WHERE state IN ('available', 'running', 'retryable');

CREATE TABLE profiles (
    export_id        uuid NOT NULL REFERENCES exports (id) ON DELETE CASCADE,
    user_id          text COLLATE "C" NOT NULL,     -- byte order: pages are stable and match clients' sorting
    doc              jsonb NOT NULL,                -- the exported object, untouched
    email            text,
    connection       text,
    roles            jsonb,                         -- null until fetched
    authentication_methods jsonb,
    authenticators   jsonb,
    enrollments      jsonb,
    role_names       text[],
    has_mfa          boolean,
    enriched_at      timestamptz,                   -- per-user MFA checkpoint
    enrichment_error text,
    PRIMARY KEY (export_id, user_id)
);
CREATE INDEX profiles_role_names ON profiles USING gin (role_names);
CREATE INDEX profiles_has_mfa ON profiles (export_id, has_mfa, user_id);
CREATE INDEX profiles_connection ON profiles (export_id, connection, user_id);
CREATE INDEX profiles_email ON profiles (export_id, email);
CREATE INDEX profiles_pending ON profiles (export_id, user_id) WHERE enriched_at IS NULL;

-- Role enumeration, checkpointed per page so a resumed export continues where it stopped.
CREATE TABLE export_roles (
    export_id        uuid NOT NULL REFERENCES exports (id) ON DELETE CASCADE,
    role_id          text NOT NULL,
    name             text COLLATE "C" NOT NULL,
    description      text,
    next_from        text,                          -- checkpoint cursor of the next page
    done             boolean NOT NULL DEFAULT false,
    PRIMARY KEY (export_id, role_id)
);

CREATE TABLE role_members (
    export_id        uuid NOT NULL REFERENCES exports (id) ON DELETE CASCADE,
    role_id          text NOT NULL,
    user_id          text COLLATE "C" NOT NULL,
    PRIMARY KEY (export_id, user_id, role_id)
);

-- GCRA state of each tenant's Management API budget, shared by every replica.
CREATE TABLE rate_limits (
    tenant           text PRIMARY KEY,
    tat              timestamptz NOT NULL DEFAULT now()
);
