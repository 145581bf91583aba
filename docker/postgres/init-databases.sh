#!/bin/bash
# Runs once, when the stack's PostgreSQL starts on an empty volume (/docker-entrypoint-initdb.d/).
# POSTGRES_USER (airflow) owns the Airflow metadata database (POSTGRES_DB); this adds the MLflow
# backend store and the source-table database, each with its own owner and the same password.
set -euo pipefail

for db in mlflow source; do
    echo "init-databases: role and database ${db}"
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
        -v name="$db" -v password="$POSTGRES_PASSWORD" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
SQL
done
