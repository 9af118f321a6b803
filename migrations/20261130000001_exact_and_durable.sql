-- Exact documents, progress-restored retry budgets, bounded role folding.

-- The exported line exactly as Auth0 wrote it: jsonb would reorder keys, normalise numbers and
-- refuse U+0000. Rows stored before this migration keep their jsonb `doc`.
ALTER TABLE profiles ADD COLUMN raw text;
ALTER TABLE profiles ALTER COLUMN doc DROP NOT NULL;
-- NOT VALID, then VALIDATE: existing rows are checked without blocking writes to the table.
ALTER TABLE profiles ADD CONSTRAINT profiles_has_document CHECK (raw IS NOT NULL OR doc IS NOT NULL) NOT VALID;
ALTER TABLE profiles VALIDATE CONSTRAINT profiles_has_document;

-- `attempt` stays the fencing token (it only grows); `errors` counts failures since the job last
-- made progress, and that is what `max_attempts` bounds: a 17-hour stage that keeps moving never
-- runs out of retries.
ALTER TABLE queue_jobs ADD COLUMN errors integer NOT NULL DEFAULT 0;
-- Set by workers that hold a session-level advisory lock on the job while running it and beat
-- every second: a job whose lock is gone and whose beat stopped has lost its worker.
ALTER TABLE queue_jobs ADD COLUMN claimed_at timestamptz;
ALTER TABLE queue_jobs ADD COLUMN heartbeat_at timestamptz;

-- Role memberships are folded into profiles in bounded batches; this is the last user_id folded.
ALTER TABLE exports ADD COLUMN roles_folded_after text COLLATE "C";

