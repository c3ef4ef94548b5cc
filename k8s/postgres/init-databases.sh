#!/bin/sh
# Run by the PostgreSQL image once, when it initialises an empty volume
# (/docker-entrypoint-initdb.d): one role and one database per service, each
# role owning only its own database, so no service can read another's data.
set -eu
for service in inventory payment order; do
    password_var="$(echo "$service" | tr '[:lower:]' '[:upper:]')_DB_PASSWORD"
    password=$(printenv "$password_var") || {
        echo "init-databases: $password_var is not set" >&2
        exit 1
    }
    psql --no-psqlrc --set ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
        --set service="$service" --set password="$password" <<'SQL'
CREATE ROLE :"service" LOGIN PASSWORD :'password';
CREATE DATABASE :"service" OWNER :"service";
REVOKE ALL ON DATABASE :"service" FROM PUBLIC;
SQL
    echo "init-databases: database $service ready"
done
