#!/usr/bin/env bash
# Make sure PostgreSQL is installed, running on 127.0.0.1:5432, and lets user `postgres` in from
# 127.0.0.1 without a password (trust in pg_hba.conf): what the postgres-marked tests and the
# PostgreSQL setup of docs/operations.md expect. Idempotent: on a machine where all of that holds it
# changes nothing. Debian/Ubuntu (apt, pg_ctlcluster). Prints every step it took or skipped.
# ENSURE_POSTGRES_PORT / ENSURE_POSTGRES_CLUSTER choose another port or cluster name (for trying it).
set -euo pipefail
PORT="${ENSURE_POSTGRES_PORT:-5432}"
NAME="${ENSURE_POSTGRES_CLUSTER:-main}"
say() { echo "ensure-postgres: $*"; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# 1. Installed?
if command -v pg_lsclusters >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  say "installed: $(ls -d /usr/lib/postgresql/*/ | xargs -n1 basename | sort -V | tail -1 | sed 's/^/PostgreSQL /')"
else
  say "not installed: apt-get install postgresql"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  say "installed: $(ls -d /usr/lib/postgresql/*/ | xargs -n1 basename | sort -V | tail -1 | sed 's/^/PostgreSQL /')"
fi

# 2. A cluster on the port (the package normally creates `main` on 5432; create it when missing).
cluster_line() { pg_lsclusters -h 2>/dev/null | awk -v p="$PORT" '$3 == p' | head -1; }
if [ -z "$(cluster_line)" ]; then
  VERSION=$(ls /usr/lib/postgresql | sort -V | tail -1)
  if pg_lsclusters -h 2>/dev/null | awk '{print $1"/"$2}' | grep -qx "$VERSION/$NAME"; then
    say "error: cluster $VERSION/$NAME exists but not on port $PORT; see pg_lsclusters" >&2
    exit 1
  fi
  say "no cluster on port $PORT: pg_createcluster $VERSION $NAME --port $PORT"
  $SUDO pg_createcluster "$VERSION" "$NAME" --port "$PORT" >/dev/null
fi
read -r VERSION CLUSTER _ STATUS _ <<<"$(cluster_line)"
HBA="/etc/postgresql/$VERSION/$CLUSTER/pg_hba.conf"

# 3. Trust for user postgres from 127.0.0.1 (first matching line wins, so it goes on top).
if grep -Eq '^[[:space:]]*host[[:space:]]+all[[:space:]]+(all|postgres)[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$HBA"; then
  say "pg_hba.conf already trusts 127.0.0.1 ($HBA)"
  HBA_CHANGED=0
else
  say "adding 'host all postgres 127.0.0.1/32 trust' at the top of $HBA (backup: $HBA.bak)"
  $SUDO cp -p "$HBA" "$HBA.bak"
  { echo "# added by scripts/ensure-postgres.sh: local tests connect as postgres without a password"
    echo "host    all    postgres    127.0.0.1/32    trust"
    cat "$HBA.bak"; } | $SUDO tee "$HBA" >/dev/null
  HBA_CHANGED=1
fi

# 4. Running?
if [ "$STATUS" = "online" ]; then
  say "cluster $VERSION/$CLUSTER is running on port $PORT"
  if [ "$HBA_CHANGED" = 1 ]; then
    say "reloading cluster $VERSION/$CLUSTER for the new pg_hba.conf"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$VERSION" "$CLUSTER" reload
  fi
else
  say "cluster $VERSION/$CLUSTER is $STATUS: starting it"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$VERSION" "$CLUSTER" start
fi
for _ in $(seq 1 30); do
  pg_isready -q -h 127.0.0.1 -p "$PORT" && break
  sleep 1
done

# 5. The check that matters: a password-less connection as postgres over TCP.
if ! VERSION_TEXT=$(psql -w -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -Atc 'show server_version' 2>&1); then
  say "error: cannot connect as postgres to 127.0.0.1:$PORT without a password: $VERSION_TEXT" >&2
  exit 1
fi
say "ok: postgresql://postgres@127.0.0.1:$PORT/postgres answers (server $VERSION_TEXT)"
