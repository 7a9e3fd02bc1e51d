"""How long one failed storage call takes while the S3 endpoint is down (a closed loopback port), for
ValueBias's ObjectStore (its own retries off: ``retries=0``) against plain s3fs with s3fs's and botocore's
default retries, side by side in one run.

    .venv/bin/python -m bench.storage_outage

The first ObjectStore call also builds the S3 client; the later ones show the per-attempt cost that
the backoff schedule adds to.
"""

import os
import socket
import time


def main() -> None:
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_EC2_METADATA_DISABLED="true")
    with socket.socket() as sock:  # a port nothing listens on: every connection is refused
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"

    import s3fs

    from object_store import ObjectStore

    store = ObjectStore("s3://bench/prefix", endpoint, retries=0)
    ours = []
    for _ in range(5):
        started = time.perf_counter()
        try:
            store.write_bytes("key", b"x")
        except OSError:
            pass
        ours.append(time.perf_counter() - started)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
    started = time.perf_counter()
    try:
        fs.pipe_file("bench/prefix/key", b"x")
    except Exception:  # noqa: BLE001 - whatever s3fs raises once it gives up
        pass
    default = time.perf_counter() - started
    steady = sorted(ours[1:])[len(ours[1:]) // 2]
    print(f"objectstore_first_call_ms={ours[0] * 1000:.1f}")
    print(f"objectstore_median_later_call_ms={steady * 1000:.1f}")
    print(f"s3fs_default_call_s={default:.2f}")
    print(f"ratio_default_over_objectstore={default / steady:.0f}")


if __name__ == "__main__":
    main()
