-- tributary_reader: the role of the read side (services/console). SELECT on every table of this
-- schema, today's and those later migrations create (default privileges), nothing else; its
-- sessions are read-only by default as well. The role is created here when missing (it belongs
-- to the cluster, so several databases share it); where the writer may not create roles, an
-- operator creates it (CREATE ROLE tributary_reader LOGIN PASSWORD '…') and the grants follow
-- at the next migration run. Without a password it can log in only where pg_hba trusts it.
DO $migration$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tributary_reader') THEN
        BEGIN
            CREATE ROLE tributary_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
            ALTER ROLE tributary_reader SET default_transaction_read_only = on;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database's migration created it at the same moment
            WHEN insufficient_privilege THEN
                RAISE WARNING 'role tributary_reader does not exist and this role may not create '
                              'it: the console cannot read until an operator creates it';
                RETURN;
        END;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO tributary_reader', current_database());
    GRANT USAGE ON SCHEMA public TO tributary_reader;
    GRANT SELECT ON ALL TABLES IN SCHEMA public TO tributary_reader;
    ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO tributary_reader;
END
$migration$;
