-- Profiles partitioned per export: an export's rows live in their own table, loaded by COPY with
-- only the primary key, compacted and indexed once when the export completes, and dropped in one
-- statement.

ALTER TABLE profiles RENAME TO profiles_legacy;
ALTER TABLE profiles_legacy RENAME CONSTRAINT profiles_pkey TO profiles_legacy_pkey;

CREATE TABLE profiles (
    export_id        uuid NOT NULL,
    user_id          text COLLATE "C" NOT NULL,     -- byte order: pages are stable and match clients' sorting
    doc              jsonb,                         -- rows of releases before 20261130000001
    raw              text,                          -- the exported line exactly as Auth0 wrote it
    plain            boolean,                       -- raw has no top-level member named like an enrichment
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
    PRIMARY KEY (export_id, user_id),
    CONSTRAINT profiles_has_document CHECK (raw IS NOT NULL OR doc IS NOT NULL)
) PARTITION BY LIST (export_id);

-- Rows stored before this migration stay where they are, as one partition for their exports
-- (with the indexes they had); new exports get partitions of their own.
DO $$
DECLARE
    ids text;
BEGIN
    SELECT string_agg(quote_literal(export_id::text), ', ') INTO ids
      FROM (SELECT DISTINCT export_id FROM profiles_legacy) d;
    IF ids IS NULL THEN
        DROP TABLE profiles_legacy;
    ELSE
        ALTER TABLE profiles_legacy DROP CONSTRAINT IF EXISTS profiles_export_id_fkey;
        ALTER TABLE profiles_legacy ADD COLUMN plain boolean;
        EXECUTE format('ALTER TABLE profiles ATTACH PARTITION profiles_legacy FOR VALUES IN (%s)', ids);
    END IF;
END $$;

-- The partition of one export, created empty and attached on first use. Called with the export id
-- as a bound parameter; the partition's name is derived from it.
CREATE FUNCTION exporter_profiles_partition(export uuid) RETURNS regclass
LANGUAGE plpgsql AS $$
DECLARE
    part text := 'profiles_' || replace(export::text, '-', '');
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = 'profiles'::regclass AND inhrelid = to_regclass(part)) THEN
        EXECUTE format('CREATE TABLE IF NOT EXISTS %I (LIKE profiles INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
        -- The bound as a constraint first: attaching then needs no scan.
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (export_id = %L)', part, part || '_bound', export);
        EXECUTE format('ALTER TABLE profiles ATTACH PARTITION %I FOR VALUES IN (%L)', part, export);
    END IF;
    RETURN to_regclass(part);
END $$;

-- The read indexes of a completed export's partition, built once over all its rows.
CREATE FUNCTION exporter_index_partition(export uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    part text := 'profiles_' || replace(export::text, '-', '');
BEGIN
    IF to_regclass(part) IS NULL THEN
        RETURN;  -- an export stored before partitioning: its partition has its indexes
    END IF;
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I USING gin (role_names)', part || '_roles', part);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (has_mfa, user_id)', part || '_mfa', part);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (connection, user_id)', part || '_connection', part);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (email, user_id)', part || '_email', part);
    EXECUTE format('ANALYZE %I', part);
END $$;
