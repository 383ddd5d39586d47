"""A real Ray cluster for tests, inside a loopback-only network namespace made here.

Ray binds the machine's external address and calls the cloud metadata address at every start,
even when told 127.0.0.1; traffic to anything but loopback is forbidden on our machines. So the
head, any extra node and every client (`ray job submit`, the job-status queries) run through
`ip netns exec NS`, in a namespace that only has `lo`. Teardown kills exactly the processes in
that namespace (never `ray stop`, which would stop every Ray cluster on the machine) and deletes
it. Ray's session files go to a temp dir of this cluster only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

BIN = Path(sys.executable).parent


def netns_available() -> Optional[str]:
    """None if this machine can make network namespaces, else why not."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "making a network namespace needs root"
    return None


class LoopbackRayCluster:
    GCS_PORT, DASHBOARD_PORT = 6379, 8265  # a fresh namespace has every port free

    def __init__(self, head_cpus: int = 2, env: Optional[dict] = None) -> None:
        self.ns = f"llada-{uuid.uuid4().hex[:8]}"
        self.temp = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # short: Ray's socket paths are limited
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_ADDRESS": f"127.0.0.1:{self.GCS_PORT}", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.procs: list[subprocess.Popen] = []
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        try:
            subprocess.run(["ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up"], check=True)
            self.head = self._start_node(["--head", f"--port={self.GCS_PORT}", f"--dashboard-port={self.DASHBOARD_PORT}",
                                          "--dashboard-host=127.0.0.1", "--include-dashboard=true",
                                          f"--num-cpus={head_cpus}"], "head")
            self._wait_for_job_api()
        except BaseException:
            self.close()
            raise

    # -- processes ------------------------------------------------------------------------------
    def exec_cmd(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *cmd]

    def _start_node(self, flags: list[str], label: str, extra: Optional[list[str]] = None) -> subprocess.Popen:
        log = open(self.temp / f"{label}.log", "w")
        cmd = [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp}",
               "--disable-usage-stats", *flags, *(extra or [])]
        proc = subprocess.Popen(self.exec_cmd(cmd), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def add_node(self, cpus: int, label: str) -> subprocess.Popen:
        """A second raylet on this machine, joined to the head (ports of its own)."""
        before = set(self.node_ids())
        base = 20000 + 1000 * len(self.procs)
        proc = self._start_node(
            [f"--address=127.0.0.1:{self.GCS_PORT}", f"--num-cpus={cpus}", f"--node-manager-port={base}",
             f"--object-manager-port={base + 1}", f"--metrics-export-port={base + 2}",
             f"--dashboard-agent-listen-port={base + 3}", f"--dashboard-agent-grpc-port={base + 4}",
             f"--runtime-env-agent-port={base + 5}", f"--min-worker-port={base + 10}",
             f"--max-worker-port={base + 200}", f"--resources={json.dumps({label: 1})}"], label)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if len(set(self.node_ids()) - before) == 1:
                return proc
            time.sleep(1)
        raise TimeoutError(f"node {label} did not join the cluster: {(self.temp / f'{label}.log').read_text()[-2000:]}")

    def node_ids(self) -> list[str]:
        """Ids of the alive nodes (asked through the state API, from inside the namespace)."""
        code = ("import ray, json; ray.init(address='auto', logging_level='ERROR'); "
                "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))")
        res = subprocess.run(self.exec_cmd([sys.executable, "-c", code]), env=self.env, capture_output=True,
                             text=True, timeout=120)
        return json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else []

    # -- jobs -------------------------------------------------------------------------------------
    def _wait_for_job_api(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = subprocess.run(self.exec_cmd([str(BIN / "ray"), "job", "list", "--address",
                                                f"http://127.0.0.1:{self.DASHBOARD_PORT}"]),
                                 env=self.env, capture_output=True, text=True, timeout=60)
            if res.returncode == 0:
                return
            time.sleep(2)
        raise TimeoutError(f"the Ray job API did not come up: {(self.temp / 'head.log').read_text()[-3000:]}")

    def submit(self, entrypoint: list[str], working_dir: Path, job_id: str, wait: bool = True,
               timeout: float = 600) -> subprocess.CompletedProcess | subprocess.Popen:
        """`ray job submit` (the CLI users run), retried while the job API still refuses submissions."""
        cmd = self.exec_cmd([str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{self.DASHBOARD_PORT}",
                             "--submission-id", job_id, "--working-dir", str(working_dir), "--", *entrypoint])
        if not wait:
            return subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True)
        for attempt in range(5):
            res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
            if res.returncode == 0 or "Job '" in res.stdout + res.stderr or attempt == 4:
                return res  # submitted (the CLI exits 1 when the job itself fails)
            time.sleep(3)
        return res

    def job_status(self, job_id: str) -> dict:
        """(status, driver exit code, logs) through the Python job client, which has the real exit code."""
        code = ("import json, sys; from ray.job_submission import JobSubmissionClient as C; "
                f"c = C('http://127.0.0.1:{self.DASHBOARD_PORT}'); i = c.get_job_info(sys.argv[1]); "
                "print(json.dumps({'status': str(i.status), 'exit_code': getattr(i, 'driver_exit_code', None), "
                "'logs': c.get_job_logs(sys.argv[1])}))")
        res = subprocess.run(self.exec_cmd([sys.executable, "-c", code, job_id]), env=self.env, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        return json.loads(res.stdout.strip().splitlines()[-1])

    # -- teardown ---------------------------------------------------------------------------------
    def namespace_pids(self) -> list[int]:
        res = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True)
        return [int(x) for x in res.stdout.split()] if res.returncode == 0 else []

    @staticmethod
    def descendants(pid: int) -> list[int]:
        """Every process below `pid` (by parent links, whatever their process group or session)."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        out, todo = [], [pid]
        while todo:
            for child in children.get(todo.pop(), []):
                out.append(child)
                todo.append(child)
        return out

    def kill_node(self, proc: subprocess.Popen) -> None:
        """Kill one node as a machine failure would: its raylet, agents and the workers it runs,
        all at once (a worker left alive would go on training until Ray noticed the dead raylet)."""
        victims = [proc.pid, *self.descendants(proc.pid)]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)

    def close(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.namespace_pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + (15 if sig == signal.SIGTERM else 30)
            while self.namespace_pids() and time.monotonic() < deadline:
                time.sleep(0.5)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> "LoopbackRayCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
