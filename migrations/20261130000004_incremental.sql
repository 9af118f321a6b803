-- Incremental exports: an export may build on a completed one of the same request (its base),
-- refetching MFA only for users whose factors may have changed since; the tenant log checkpoint
-- taken before each Auth0 job says where "since" starts.
ALTER TABLE exports
    ADD COLUMN base_id uuid,                  -- no reference: a base may be deleted later
    ADD COLUMN mode text CHECK (mode IN ('full', 'incremental')),
    ADD COLUMN full_reason text,              -- why an export with a base ran in full
    ADD COLUMN log_checkpoint text,           -- newest tenant log id before the Auth0 job was created
    ADD COLUMN users_added bigint,
    ADD COLUMN users_deleted bigint,
    ADD COLUMN users_changed bigint,
    ADD COLUMN mfa_refetched bigint,
    ADD COLUMN calls_saved bigint;

-- The diff of an incremental export against its base. Deleted users keep their last known
-- profile (the base's row), since the base may be deleted later. Removed with the export
-- (by the purge, like the role scratch rows, not by a cascade).
CREATE TABLE export_changes (
    export_id        uuid NOT NULL,
    user_id          text COLLATE "C" NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('added', 'deleted', 'changed')),
    raw              text,
    doc              jsonb,
    plain            boolean,
    roles            jsonb,
    authentication_methods jsonb,
    authenticators   jsonb,
    enrollments      jsonb,
    enrichment_error text,
    PRIMARY KEY (export_id, user_id)
);
CREATE INDEX export_changes_kind ON export_changes (export_id, kind, user_id);
