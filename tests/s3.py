"""A throwaway S3 endpoint for tests (moto's server on 127.0.0.1 at a free port, in a thread).

Any credentials pass; tests/conftest.py sets dummy ones in the environment before anything starts
(Ray's workers inherit it), so no test can reach a real bucket.

    from tests.s3 import s3_server  # noqa: F401  (a session fixture; skips without moto)

    def test_x(s3_server, tmp_path):
        uri = s3_server.upload(folder, "bucket/prefix")   # every file under folder -> the URI
"""

from __future__ import annotations

from pathlib import Path

import pytest


class S3Server:
    def __init__(self, host: str, port: int):
        import boto3

        self.endpoint = f"{host}:{port}"
        self.client = boto3.client("s3", endpoint_url=f"http://{self.endpoint}", region_name="us-east-1")
        self.buckets: set[str] = set()

    def uri(self, where: str) -> str:
        """``s3://where`` with the query that points pyarrow at this server."""
        return f"s3://{where}?endpoint_override={self.endpoint}&scheme=http&region=us-east-1"

    def put(self, where: str, data: bytes) -> None:
        bucket, _, key = where.partition("/")
        if bucket not in self.buckets:
            self.client.create_bucket(Bucket=bucket)
            self.buckets.add(bucket)
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def upload(self, folder: Path, where: str) -> str:
        """Every file under ``folder`` to ``where`` (``bucket/prefix``); returns its URI."""
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                self.put(f"{where}/{path.relative_to(folder).as_posix()}", path.read_bytes())
        return self.uri(where)


@pytest.fixture(scope="session")
def s3_server():
    server_module = pytest.importorskip("moto.server", reason="moto[server] is in requirements.txt")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield S3Server(*server.get_host_and_port())
    finally:
        server.stop()
