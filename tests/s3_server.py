"""A real S3-protocol server on loopback for tests: moto's standalone server (ThreadedMotoServer).

Clients reach it the way they reach any S3-compatible store: AWS_ENDPOINT_URL, keys from the
environment (dummy ones), the instance-metadata lookup off. Nothing of the client is mocked; the
requests go over HTTP to the server. `env` is what a subprocess (torchrun, a Ray worker) needs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import urllib.request
import uuid

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing-key", "AWS_SECRET_ACCESS_KEY": "testing-secret",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


class LoopbackS3:
    def __init__(self, port: int = 0) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.server.start()
        host, port = self.server._server.server_address
        self.endpoint = f"http://{host}:{port}"
        # Copies of remote checkpoints and tokenizers go to a folder of this server's, not ~/.cache.
        self.cache = tempfile.mkdtemp(prefix="llada-s3-cache-")
        self.env = {**S3_ENV, "AWS_ENDPOINT_URL": self.endpoint, "LLADA_DS_CACHE": self.cache}

    def bucket(self, prefix: str = "bkt") -> str:
        """A new, empty bucket; returns its name."""
        import fsspec

        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        with self.environment():
            fsspec.filesystem("s3", skip_instance_cache=True).mkdir(name)
        return name

    @contextlib.contextmanager
    def environment(self, **overrides: str):
        """This process's environment pointed at the server (restored afterwards)."""
        saved = {k: os.environ.get(k) for k in {**self.env, **overrides}}
        os.environ.update({**self.env, **overrides})
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    @contextlib.contextmanager
    def authentication(self):
        """The server checks signatures and keys (moto's IAM emulation) while inside; off otherwise.
        Keys the server never issued are then refused, as a real store refuses wrong credentials."""
        self._post("/moto-api/reset-auth", b"0")
        try:
            yield
        finally:
            self._post("/moto-api/reset-auth", b"inf")

    def _post(self, path: str, body: bytes) -> dict:
        req = urllib.request.Request(self.endpoint + path, data=body, method="POST",
                                     headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def close(self) -> None:
        self.server.stop()
        shutil.rmtree(self.cache, ignore_errors=True)


if __name__ == "__main__":  # `python tests/s3_server.py PORT`: a server in its own process (e.g. in a netns)
    import sys
    import time

    LoopbackS3(int(sys.argv[1]))
    print("ready", flush=True)
    while True:
        time.sleep(3600)
