#!/usr/bin/env bash
# Wait for a build running in the background (.ci/run's image build): its exit code lands in RC_FILE,
# its output in LOG. Fails with the log's tail when the build fails, or when its log has not grown
# for MLCYCLE_BUILD_STALL_SECONDS (default 900): a build that stopped making progress, not a slow one.
set -euo pipefail
rc_file=$1 log=$2 stall=${MLCYCLE_BUILD_STALL_SECONDS:-900}
size=-1 changed=$SECONDS waited=$SECONDS
while [ ! -s "$rc_file" ]; do
  now=$(stat -c %s "$log" 2>/dev/null || echo 0)
  if [ "$now" != "$size" ]; then size=$now changed=$SECONDS; fi
  if (( SECONDS - changed > stall )); then
    echo "==> the image build made no progress for ${stall}s; its log ($log) ends:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  sleep 5
done
rc=$(cat "$rc_file")
if [ "$rc" != 0 ]; then
  echo "==> the image build failed (exit $rc); its log ($log) ends:" >&2
  tail -n 60 "$log" >&2
  exit 1
fi
echo "==> images built (waited $((SECONDS - waited)) s for them); the build's summary:"
grep '^build-images:' "$log" | tail -n 12 || true
