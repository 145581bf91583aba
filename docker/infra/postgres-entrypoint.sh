#!/usr/bin/env bash
# Entrypoint of mlcycle-postgres:15 (docker/infra/Dockerfile, target postgres): the subset of the
# official postgres image's docker-entrypoint.sh that the stack relies on, for Debian's PostgreSQL
# where no image registry is reachable. Same contract:
#
#   POSTGRES_PASSWORD          required (unless POSTGRES_HOST_AUTH_METHOD=trust); POSTGRES_PASSWORD_FILE too
#   POSTGRES_USER              superuser created by initdb (default postgres)
#   POSTGRES_DB                database created on first start (default: POSTGRES_USER)
#   PGDATA                     data directory (default /var/lib/postgresql/data)
#   POSTGRES_HOST_AUTH_METHOD  pg_hba method of TCP connections (default scram-sha-256)
#   POSTGRES_INITDB_ARGS       extra initdb arguments
#
# On an empty PGDATA: initdb, a temporary server on the unix socket only, POSTGRES_DB, then every
# /docker-entrypoint-initdb.d/ file in name order (*.sh executed when executable, else sourced;
# *.sql and *.sql.gz fed to psql as POSTGRES_USER), and the temporary server stops. Then
# `exec postgres "$@"` with the command's arguments (e.g. -c port=15432 -c listen_addresses=127.0.0.1).
# Started as root, it creates and chowns PGDATA and re-runs itself as postgres (setpriv, not gosu).
#
# Differs from the official script: loopback TCP connections need the password (initdb
# --auth-host), where the official image trusts 127.0.0.1 and ::1; under --network host these
# would be the host's loopback. The unix socket is trusted, as in the official image.
set -Eeo pipefail

log() { echo "docker-entrypoint: $*" >&2; }

# VAR or VAR_FILE (Docker secrets), never both.
file_env() {
	local var=$1 file_var="${1}_FILE" val=${2:-}
	if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
		log "error: both $var and $file_var are set (but are exclusive)"
		exit 1
	fi
	if [ -n "${!var:-}" ]; then
		val=${!var}
	elif [ -n "${!file_var:-}" ]; then
		val=$(<"${!file_var}")
	fi
	export "$var=$val"
	unset "$file_var"
}

# Options after which postgres prints something and exits: no initialisation for those.
wants_help() {
	local arg
	for arg; do
		case "$arg" in
			-'?' | --help | --describe-config | -V | --version) return 0 ;;
		esac
	done
	return 1
}

# psql on the temporary server's socket as POSTGRES_USER, stopping at the first error.
process_sql() {
	PGHOST= PGHOSTADDR= psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc \
		--dbname "${PSQL_DBNAME:-$POSTGRES_DB}" "$@"
}

run_initdb() {
	# shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of words, as in the official image
	initdb --username="$POSTGRES_USER" --auth-local=trust --auth-host="$POSTGRES_HOST_AUTH_METHOD" \
		$POSTGRES_INITDB_ARGS "$@"
}

init_database() {
	if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
		log "error: database is uninitialized and superuser password is not specified."
		log "       Set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust, which allows every connection without one)."
		exit 1
	fi

	# The password reaches initdb through a pipe, never a file or the command line.
	if [ -n "$POSTGRES_PASSWORD" ]; then
		run_initdb --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD")
	else
		run_initdb
	fi
	# Every other host too, like the official image's pg_hba.conf.
	printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"

	# The temporary server: the command's settings, but no TCP and the default socket.
	export PGPASSWORD=${PGPASSWORD:-$POSTGRES_PASSWORD}
	local args=("${@:2}" -c listen_addresses= -p 5432)
	PGUSER=${PGUSER:-$POSTGRES_USER} pg_ctl -D "$PGDATA" -w start -o "$(printf '%q ' "${args[@]}")"

	if [ "$POSTGRES_DB" != postgres ]; then
		local exists
		exists=$(PSQL_DBNAME=postgres process_sql --tuples-only --no-align --set db="$POSTGRES_DB" \
			<<<"SELECT 1 FROM pg_database WHERE datname = :'db'")
		if [ -z "$exists" ]; then
			PSQL_DBNAME=postgres process_sql --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
		fi
	fi

	local f
	for f in /docker-entrypoint-initdb.d/*; do
		[ -e "$f" ] || continue
		case "$f" in
			*.sh)
				if [ -x "$f" ]; then
					log "running $f"
					"$f"
				else
					log "sourcing $f"
					# shellcheck disable=SC1090
					. "$f"
				fi
				;;
			*.sql) log "running $f"; process_sql -f "$f" ;;
			*.sql.gz) log "running $f"; gunzip -c "$f" | process_sql ;;
			*) log "ignoring $f" ;;
		esac
	done

	pg_ctl -D "$PGDATA" -m fast -w stop
	unset PGPASSWORD
	log "PostgreSQL init process complete; ready for start up."
}

# A first argument that is an option means "postgres with these options".
if [ "${1:0:1}" = '-' ]; then
	set -- postgres "$@"
fi

if [ "$1" = postgres ] && ! wants_help "$@"; then
	file_env POSTGRES_PASSWORD
	file_env POSTGRES_USER postgres
	file_env POSTGRES_DB "$POSTGRES_USER"
	file_env POSTGRES_INITDB_ARGS
	: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
	export PGDATA=${PGDATA:-/var/lib/postgresql/data} POSTGRES_HOST_AUTH_METHOD

	mkdir -p "$PGDATA" /var/run/postgresql 2>/dev/null || :
	chmod 700 "$PGDATA" 2>/dev/null || :
	if [ "$(id -u)" = 0 ]; then
		chmod 3777 /var/run/postgresql
		find "$PGDATA" /var/run/postgresql \! -user postgres -exec chown postgres:postgres '{}' +
		export HOME=/var/lib/postgresql
		exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
	fi

	if [ ! -s "$PGDATA/PG_VERSION" ]; then
		init_database "$@"
	else
		log "PostgreSQL database directory appears to contain a database; skipping initialization"
	fi
fi

exec "$@"
