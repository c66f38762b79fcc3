#!/usr/bin/env bash
# Run once by the postgres image when it creates its data directory (/docker-entrypoint-initdb.d/):
# a login role for Grafana that can read forgetwatch's tables and nothing else. The service's own role
# (POSTGRES_USER) owns the schema; tables it creates later are readable by Grafana through the
# default privileges below. Grafana never gets the owner, a superuser in this image.
set -euo pipefail
: "${FORGETWATCH_GRAFANA_DB_USER:?set FORGETWATCH_GRAFANA_DB_USER (e.g. grafana_reader) in .env}"
: "${FORGETWATCH_GRAFANA_DB_PASSWORD:?set FORGETWATCH_GRAFANA_DB_PASSWORD in .env}"
if [ "$FORGETWATCH_GRAFANA_DB_USER" = "$POSTGRES_USER" ]; then
    echo "FORGETWATCH_GRAFANA_DB_USER must not be the database owner ($POSTGRES_USER)" >&2
    exit 1
fi
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v reader="$FORGETWATCH_GRAFANA_DB_USER" -v password="$FORGETWATCH_GRAFANA_DB_PASSWORD" \
     -v owner="$POSTGRES_USER" -v database="$POSTGRES_DB" <<'SQL'
CREATE ROLE :"reader" LOGIN PASSWORD :'password' NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT CONNECT ON DATABASE :"database" TO :"reader";
GRANT USAGE ON SCHEMA public TO :"reader";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";
ALTER ROLE :"reader" SET default_transaction_read_only = on;
ALTER ROLE :"reader" SET statement_timeout = '30s';
SQL
