-- Compose only (docker-entrypoint-initdb.d, first start of an empty volume): the console's
-- read-only role with a DEVELOPMENT password. writer-postgres migration 0007 finds it and grants
-- it SELECT; in production create it the same way with a real password from your secret store.
CREATE ROLE tributary_reader LOGIN PASSWORD 'tributary-reader-dev';
ALTER ROLE tributary_reader SET default_transaction_read_only = on;
