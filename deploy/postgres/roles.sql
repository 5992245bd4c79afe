-- The cloud's service role on PostgreSQL: it may do what `cloudserver serve` does and no more.
-- Run as the tables' owner (the role `cloudserver db upgrade` connects as) after every upgrade:
--   psql -v service=nuprov_service -f deploy/postgres/roles.sql DATABASE
-- The service role must already exist (CREATE ROLE nuprov_service LOGIN PASSWORD '...').
-- The audit log is append-only for it: SELECT and INSERT, never UPDATE, DELETE or TRUNCATE (the
-- trigger audit_no_change refuses those for everyone else too, the owner included, until the
-- owner disables it, which `cloudserver audit verify` then shows as a broken chain).
GRANT USAGE ON SCHEMA public TO :"service";
GRANT SELECT, INSERT ON device_keys, signed_images, job_devices, results, revoked TO :"service";
GRANT SELECT, INSERT, UPDATE ON devices, jobs TO :"service";  -- a board's line; a job's state and count
GRANT SELECT, INSERT ON audit TO :"service";
REVOKE UPDATE, DELETE, TRUNCATE ON audit FROM :"service";
GRANT SELECT ON alembic_version TO :"service";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"service";
