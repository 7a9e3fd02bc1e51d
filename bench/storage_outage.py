"""How long one failed storage call takes while the S3 endpoint is down (a closed loopback port), for
ValueBias's ObjectStore (its own retries off: ``retries=0``) against plain s3fs with s3fs's and botocore's
default retries, side by side in one run.

    .venv/bin/python -m bench.storage_outage
    .venv/bin/python -m bench.storage_outage --smoke    # seconds: 3 ObjectStore calls, s3fs retries cut to 1

The first ObjectStore call also builds the S3 client; the later ones show the per-attempt cost that
the backoff schedule adds to. ``--smoke`` runs every step, but the s3fs baseline with one attempt (s3fs's
``retries=1``, botocore's ``max_attempts=1``), so its ratio is not the benchmark's. Exits 1 when a call
that should fail (nothing listens on the port) succeeds.
"""

import argparse
import os
import socket
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="seconds: every step, s3fs retries cut to 1")
    args = parser.parse_args(argv)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_EC2_METADATA_DISABLED="true")
    with socket.socket() as sock:  # a port nothing listens on: every connection is refused
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"

    import s3fs

    from valuebias.object_store import ObjectStore

    store = ObjectStore("s3://bench/prefix", endpoint, retries=0)
    ours, succeeded = [], 0
    for _ in range(3 if args.smoke else 5):
        started = time.perf_counter()
        try:
            store.write_bytes("key", b"x")
            succeeded += 1
        except OSError:
            pass
        ours.append(time.perf_counter() - started)
    baseline = {"retries": 1, "config_kwargs": {"retries": {"max_attempts": 1}}} if args.smoke else {}
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True, **baseline)
    started = time.perf_counter()
    try:
        fs.pipe_file("bench/prefix/key", b"x")
        succeeded += 1
    except Exception:  # noqa: BLE001 - whatever s3fs raises once it gives up
        pass
    default = time.perf_counter() - started
    if succeeded:
        print(f"FAILED: {succeeded} call(s) to {endpoint}, where nothing listens, did not fail")
        return 1
    steady = sorted(ours[1:])[len(ours[1:]) // 2]
    print(f"objectstore_first_call_ms={ours[0] * 1000:.1f}")
    print(f"objectstore_median_later_call_ms={steady * 1000:.1f}")
    print(f"s3fs_{'one_attempt' if args.smoke else 'default'}_call_s={default:.2f}")
    print(f"ratio_{'one_attempt' if args.smoke else 'default'}_over_objectstore={default / steady:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
