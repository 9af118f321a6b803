-- Scheduled exports, webhook endpoints, the events they receive and every delivery attempt.

CREATE TABLE schedules (
    id             uuid PRIMARY KEY,                -- uuid v7: keyset listing
    tenant         text NOT NULL,
    cron           text NOT NULL,                   -- 5 fields, or 6 with seconds first
    timezone       text NOT NULL,                   -- IANA name the cron fields are read in
    request        jsonb NOT NULL,                  -- the normalised export body of every run
    incremental    boolean NOT NULL,                -- each run builds on the tenant's latest export
    enabled        boolean NOT NULL DEFAULT true,
    description    text,
    next_run_at    timestamptz NOT NULL,            -- the next due time
    runs_started   bigint NOT NULL DEFAULT 0,
    runs_skipped   bigint NOT NULL DEFAULT 0,
    last_due_at    timestamptz,
    last_export_id uuid,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE enabled;

-- One row per due time acted on: the key makes a second run of one due time impossible,
-- whichever replica tries.
CREATE TABLE schedule_runs (
    schedule_id uuid NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    due_at      timestamptz NOT NULL,
    outcome     text NOT NULL CHECK (outcome IN ('started', 'skipped')),
    export_id   uuid,                               -- started, or still running when skipped
    missed      integer NOT NULL DEFAULT 0,         -- earlier due times no replica was up for
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule_id, due_at)
);
CREATE INDEX schedule_runs_created ON schedule_runs (created_at);   -- history pruning

-- No foreign key: a deleted schedule keeps its exports.
ALTER TABLE exports ADD COLUMN schedule_id uuid;
CREATE INDEX exports_schedule_active ON exports (schedule_id) WHERE status IN ('queued', 'running');

CREATE TABLE webhooks (
    id          uuid PRIMARY KEY,                   -- uuid v7: keyset listing
    url         text NOT NULL,
    events      text[] NOT NULL,
    secret      text NOT NULL,                      -- whsec_<base64>: signs every delivery
    description text,
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_events (
    id         uuid PRIMARY KEY,                    -- the webhook-id header, the same on every attempt
    type       text NOT NULL,
    payload    text NOT NULL,                       -- the exact bytes sent and signed
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_events_created ON webhook_events (created_at);

CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    seq              bigserial UNIQUE,              -- newest-first keyset listing
    webhook_id       uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id         uuid NOT NULL REFERENCES webhook_events (id),
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    series_start     integer NOT NULL DEFAULT 0,    -- attempts made before the last manual redelivery
    next_attempt_at  timestamptz,                   -- null once succeeded or given up
    last_status_code integer,
    last_latency_ms  integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE INDEX webhook_deliveries_list ON webhook_deliveries (webhook_id, seq DESC);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at) WHERE status <> 'pending';

CREATE TABLE webhook_attempts (
    delivery_id uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    started_at  timestamptz NOT NULL,
    status_code integer,
    latency_ms  integer NOT NULL,
    error       text,
    PRIMARY KEY (delivery_id, attempt)
);

-- Deliveries ride the export queue: one job per event and endpoint, claimed, leased and
-- rescued like a stage. Older releases claim only the kinds they know.
ALTER TABLE queue_jobs ALTER COLUMN export_id DROP NOT NULL;
ALTER TABLE queue_jobs ADD COLUMN delivery_id uuid REFERENCES webhook_deliveries (id) ON DELETE CASCADE;
ALTER TABLE queue_jobs DROP CONSTRAINT queue_jobs_kind_check;
ALTER TABLE queue_jobs ADD CONSTRAINT queue_jobs_kind_check
    CHECK (kind IN ('create_job', 'wait_job', 'download', 'enrich', 'finalize', 'deliver_webhook'));
ALTER TABLE queue_jobs ADD CONSTRAINT queue_jobs_subject
    CHECK (CASE WHEN kind = 'deliver_webhook' THEN delivery_id IS NOT NULL AND export_id IS NULL
                ELSE export_id IS NOT NULL AND delivery_id IS NULL END);
CREATE UNIQUE INDEX queue_jobs_one_active_delivery ON queue_jobs (delivery_id)
    WHERE state IN ('available', 'running', 'retryable');
CREATE INDEX queue_jobs_delivery ON queue_jobs (delivery_id) WHERE delivery_id IS NOT NULL;

-- Records an event and queues one delivery per enabled endpoint that wants it, in the caller's
-- transaction: an event exists exactly when the change it reports committed.
CREATE FUNCTION emit_webhook_event(event_type text, data jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    event uuid := gen_random_uuid();
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks WHERE enabled AND event_type = ANY (events)) THEN
        RETURN;
    END IF;
    INSERT INTO webhook_events (id, type, payload)
    VALUES (event, event_type, jsonb_build_object(
        'type', event_type,
        'timestamp', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'data', data)::text);
    WITH deliveries AS (
        INSERT INTO webhook_deliveries (id, webhook_id, event_id, next_attempt_at)
        SELECT gen_random_uuid(), w.id, event, now() FROM webhooks w
         WHERE w.enabled AND event_type = ANY (w.events)
        RETURNING id)
    INSERT INTO queue_jobs (kind, delivery_id, max_attempts)
    SELECT 'deliver_webhook', id, 2147483647 FROM deliveries;
    -- The queue's wake-up channel (queue::CHANNEL).
    PERFORM pg_notify('queue_jobs', '');
END $$;

-- export.completed / export.failed / export.cancelled, whichever path ended the export.
CREATE FUNCTION exports_emit_webhook_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    base text := '/v1/exports/' || NEW.id;
BEGIN
    PERFORM emit_webhook_event('export.' || NEW.status, jsonb_build_object(
        'export_id', NEW.id,
        'tenant', NEW.tenant,
        'status', NEW.status,
        'schedule_id', NEW.schedule_id,
        'mode', NEW.mode,
        'base_id', NEW.base_id,
        'created_at', NEW.created_at,
        'finished_at', NEW.finished_at,
        'counts', jsonb_build_object(
            'users_total', NEW.users_total,
            'users_enriched', NEW.users_enriched,
            'users_added', NEW.users_added,
            'users_deleted', NEW.users_deleted,
            'users_changed', NEW.users_changed,
            'api_calls', NEW.api_calls,
            'calls_saved', NEW.calls_saved),
        'error', NEW.error,
        'links', jsonb_build_object(
            'export', base,
            'profiles', base || '/profiles',
            'download', base || '/download',
            'changes', base || '/changes',
            'latest', '/v1/tenants/' || NEW.tenant || '/latest')));
    RETURN NULL;
END $$;

CREATE TRIGGER exports_webhook_event AFTER UPDATE OF status ON exports FOR EACH ROW
    WHEN (NEW.status IN ('completed', 'failed', 'cancelled') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION exports_emit_webhook_event();
