"""Create the bucket of ``MLCYCLE_STORE`` (and of the remote log folder) when it is missing.

    python scripts/ensure_bucket.py [--conn-id mlcycle_s3] [--timeout 120]

Run by the compose stack's init job (docker/airflow/entrypoint.sh) before MLflow and the Airflow
services start. The keys and the endpoint come from the Airflow connection, as for the tasks
(``MLCYCLE_S3_CONN_ID``, default ``mlcycle_s3``). The bucket is ready when an object written to it
reads back: an S3 gateway can answer before its storage has registered (SeaweedFS lists buckets
first and serves reads a few seconds later), so the check retries, saying each time what it waits
for, until it succeeds or ``--timeout`` seconds pass. Nothing to do (exit 0) when no setting names
an ``s3://`` location.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

SETTINGS = ("MLCYCLE_STORE", "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER")


def buckets(env: dict[str, str]) -> list[str]:
    """The buckets the settings name, in order, once each."""
    names = [
        env[k].removeprefix("s3://").split("/", 1)[0] for k in SETTINGS if env.get(k, "").startswith("s3://")
    ]
    return list(dict.fromkeys(n for n in names if n))


def ensure(client, bucket: str) -> None:
    """Create ``bucket`` if it is missing, then write and read back a small object."""
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
        client.create_bucket(Bucket=bucket)
        print(f"ensure_bucket: created s3://{bucket}", flush=True)
        # It exists now: checked before writing, since some servers (SeaweedFS) would create the
        # bucket on the first write and hide a create that failed, where S3 itself would not.
        client.head_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="_health/ready", Body=b"ready")
    if client.get_object(Bucket=bucket, Key="_health/ready")["Body"].read() != b"ready":
        raise RuntimeError("an object written to the bucket did not read back")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conn-id", default=os.environ.get("MLCYCLE_S3_CONN_ID", "mlcycle_s3"))
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    names = buckets(dict(os.environ))
    if not names:
        print("ensure_bucket: no s3:// location configured; nothing to do", flush=True)
        return 0
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    client = S3Hook(aws_conn_id=args.conn_id).get_conn()
    deadline = time.monotonic() + args.timeout
    for bucket in names:
        while True:
            try:
                ensure(client, bucket)
                print(f"ensure_bucket: s3://{bucket} is ready", flush=True)
                break
            except Exception as exc:  # noqa: BLE001 - any failure is retried until the deadline
                if time.monotonic() > deadline:
                    print(
                        f"ensure_bucket: ERROR: s3://{bucket} is not usable after {args.timeout:.0f} s "
                        f"(connection {args.conn_id!r}): {type(exc).__name__}: {exc}",
                        file=sys.stderr,
                    )
                    return 1
                print(f"ensure_bucket: waiting for s3://{bucket}: {type(exc).__name__}: {exc}", flush=True)
                time.sleep(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
