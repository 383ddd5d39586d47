"""A small stub of the Hugging Face Hub's HTTP API on 127.0.0.1, for push tests (no network).

It implements what huggingface_hub's create_repo, create_branch and upload_folder call: repo
creation, branches, the pre-upload negotiation (every file "regular", so no LFS round trip) and
the NDJSON commit, and keeps the committed files in memory. Token "good-token" is accepted;
anything else gets 401.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GOOD_TOKEN = "good-token"


class HubStub:
    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "branches": {name: {path: bytes}}}
        self.requests: list[tuple[str, str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                stub.requests.append(("GET", self.path))
                self._send(404, {"error": f"stub: unknown GET {self.path}"})

            def do_POST(self):
                stub.requests.append(("POST", self.path))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Authorization") != f"Bearer {GOOD_TOKEN}":
                    return self._send(401, {"error": "Invalid credentials in Authorization header"})
                path = self.path.split("?")[0]
                if path == "/api/validate-yaml":  # the model card's metadata header
                    return self._send(200, {"errors": [], "warnings": []})
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                    stub.repos.setdefault(repo_id, {"private": bool(req.get("private")), "branches": {"main": {}}})
                    return self._send(200, {"url": f"http://{self.headers['Host']}/{repo_id}", "name": repo_id})
                m = re.fullmatch(r"/api/models/(.+?)/branch/(.+)", path)
                if m:
                    stub.repos[m.group(1)]["branches"].setdefault(m.group(2), {})
                    return self._send(200, {})
                m = re.fullmatch(r"/api/models/(.+?)/preupload/(.+)", path)
                if m:
                    files = json.loads(body)["files"]
                    return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False, "oid": None} for f in files]})
                m = re.fullmatch(r"/api/models/(.+?)/commit/(.+)", path)
                if m:
                    repo, branch = m.group(1), m.group(2).replace("%2F", "/")
                    store = stub.repos[repo]["branches"].setdefault(branch, {})
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            store[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    return self._send(200, {"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{'0' * 40}",
                                            "commitOid": "0" * 40, "success": True})
                self._send(404, {"error": f"stub: unknown POST {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "HubStub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
