-- Role scratch rows of a deleted export are removed off the request, with its partition: a
-- cascading delete of a million memberships (or of the dead rows a finished export's cleanup
-- left for vacuum) held DELETE /v1/exports/{id} for seconds. The sweeper removes what an
-- interrupted removal leaves.
ALTER TABLE role_members DROP CONSTRAINT IF EXISTS role_members_export_id_fkey;
ALTER TABLE export_roles DROP CONSTRAINT IF EXISTS export_roles_export_id_fkey;
