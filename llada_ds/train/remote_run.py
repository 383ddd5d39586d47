"""A run directory in object storage (--run-dir s3://bucket/runs/NAME): checkpoints uploaded in
the background, published only when complete, and read back on any node.

    URI/checkpoints/step-00000100/        DeepSpeed's files of every rank, run_state.json last
    URI/checkpoints/step-00000100/.uploads/SAVE/rank-R   one marker per rank: its files are stored
    URI/checkpoints/latest                the tag of the newest complete checkpoint
    URI/checkpoints/universal/step-...    a universal copy (resume on another number of ranks)
    URI/config.yaml, train.log, metrics.jsonl   copies of the logs, uploaded with each checkpoint

A save: every rank writes DeepSpeed's files to fast local disk (checkpoint.local_dir), which takes
as long as a save to a local disk, then uploads its own files in a background thread while
training continues, and leaves a marker. Rank 0's publisher thread waits for the marker of every
rank of this save (SAVE is an id drawn for it), then stores run_state.json, then `latest`, then
prunes old checkpoints. An object store shows an object complete or not at all, and nothing
points at a checkpoint before all of it is stored, so a crash or kill at any point of an upload
leaves the previous `latest` loadable; a partial checkpoint is removed by the next save of its
step. One upload is in flight at a time: the next save, a reload and the end of the run first
wait for it (`flush`), and an upload that failed on any rank fails every rank there.

Loading downloads what a rank needs (its own ZeRO shard and the common files) to local disk,
into a folder named by the save id (so files of another save can never mix in); a resume on
another world size has rank 0 download everything, convert (elastic.py) and upload the universal
copy, which every rank then downloads.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Optional

from ..data.object_store import ObjectStorage
from ..data.storage import is_uri, join
from ..errors import CheckpointError, LladaError
from ..weights import CHECKPOINTS, LATEST, RUN_STATE, tag_for
from .distributed import DistInfo, all_reduce_sum, barrier, from_main, raise_if_any
from .elastic import MARKER, UNIVERSAL, convert_to_universal

UPLOADS = ".uploads"
LOGS = ("config.yaml", "train.log", "metrics.jsonl")
_RANK_FILE = re.compile(r"zero_pp_rank_(\d+)_")


class CheckpointURI(str):
    """Where a checkpoint was saved in object storage, as the loop reports it (it reads `.name`)."""

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]


def open_run_dir(run_dir: str | Path, local_dir: str, dist: DistInfo,
                 upload_delay_seconds: float = 0.0) -> tuple[Path, Optional["RemoteRun"]]:
    """(where this process writes the run's logs, the object-storage side or None): a local run
    directory is itself; a URI gets a local mirror whose logs travel with each checkpoint."""
    if not is_uri(run_dir):
        return Path(str(run_dir).removeprefix("file://")), None
    remote = RemoteRun(str(run_dir), local_dir, dist, upload_delay_seconds)
    return remote.local, remote


def staging_root(run_uri: str, local_dir: str = "") -> Path:
    """This run's folder on fast local disk (checkpoint.local_dir, default the temp dir)."""
    base = Path(local_dir) if local_dir else Path(tempfile.gettempdir()) / "llada-ds-staging"
    return base / hashlib.sha256(run_uri.rstrip("/").encode()).hexdigest()[:16]


def rank_files_only(rank: int) -> Callable[[str], bool]:
    """Which files of a checkpoint a rank needs to load it: its own ZeRO shard and the common ones."""
    def keep(name: str) -> bool:
        if name.startswith(UPLOADS):
            return False
        m = _RANK_FILE.search(name)
        return m is None or int(m.group(1)) == rank
    return keep


def _all_files(name: str) -> bool:
    return not name.startswith(UPLOADS)


class RemoteRun:
    """The object-storage side of a run directory, for one rank."""

    def __init__(self, uri: str, local_dir: str, dist: DistInfo, upload_delay_seconds: float = 0.0) -> None:
        self.uri, self.dist = uri.rstrip("/"), dist
        self.run = ObjectStorage(self.uri)
        self.store = ObjectStorage(join(self.uri, CHECKPOINTS))
        self.base = staging_root(self.uri, local_dir)
        self.local = self.base / "run"  # where this process writes the logs (rank 0 uploads them)
        self.stage = self.base / f"save-rank-{dist.rank}"
        self.downloads = self.base / "download"
        self.upload_delay_seconds = upload_delay_seconds
        self._uploader: Optional[threading.Thread] = None
        self._publisher: Optional[threading.Thread] = None
        self._errors: dict[str, str] = {}
        self.local.mkdir(parents=True, exist_ok=True)
        if dist.is_main:
            self.pull_logs()
        barrier()

    def describe(self, tag: str = "") -> str:
        return self.store.describe(tag)

    # -- logs ---------------------------------------------------------------------------------------
    def pull_logs(self) -> None:
        """The run's logs as stored with its last checkpoint (a resume appends to them)."""
        for name in LOGS:
            target = self.local / name
            if self.run.exists(name):
                target.write_bytes(self.run.read_bytes(name))
            elif target.exists():
                target.unlink()  # left by another attempt on this node, never published

    def push_logs(self) -> None:
        """Upload the logs (whole lines only: the loop may be appending)."""
        for name in LOGS:
            path = self.local / name
            if path.is_file():
                data = path.read_bytes()
                self.run.write_atomic(name, data[: data.rfind(b"\n") + 1])

    # -- reading ------------------------------------------------------------------------------------
    def latest_tag(self) -> Optional[str]:
        if not self.store.exists(LATEST):
            return None
        tag = self.store.read_bytes(LATEST).decode().strip()
        if not self.store.exists(f"{tag}/{RUN_STATE}"):
            raise CheckpointError(f"{self.describe(LATEST)} points to {tag}, which has no {RUN_STATE}: the "
                                  "checkpoint is incomplete")
        return tag

    def run_state(self, tag: str) -> dict:
        if not self.store.exists(f"{tag}/{RUN_STATE}"):
            raise CheckpointError(f"{self.describe(tag)}: not a complete llada-ds checkpoint (no {RUN_STATE})")
        return json.loads(self.store.read_bytes(f"{tag}/{RUN_STATE}"))

    def complete_tags(self) -> list[str]:
        return sorted(n.split("/")[0] for n in self.store.list() if n.count("/") == 1
                      and n.endswith(f"/{RUN_STATE}") and n.startswith("step-"))

    def fetch(self, tag: str, everything: bool = False) -> Path:
        """The files of checkpoint `tag` this rank needs (all of them with everything=True), on
        local disk: DOWNLOADS/SAVE/TAG."""
        save = self.run_state(tag).get("upload", "local")
        dest = self.downloads / save / tag
        keep = _all_files if everything else rank_files_only(self.dist.rank)
        self.store.download_tree(tag, dest, keep=keep, refresh=False)
        return dest

    def universal(self, tag: str) -> Path:
        """The universal copy of `tag` on local disk, converted and uploaded by rank 0 if the
        bucket has none yet (every rank calls this)."""
        prefix = f"{UNIVERSAL}/{tag}"
        error = None
        if self.dist.is_main:
            try:
                if not self.store.exists(f"{prefix}/{MARKER}"):
                    local = convert_to_universal(self.fetch(tag, everything=True))
                    self.store.delete(self.store.list(prefix))  # a conversion cut short
                    self.store.upload_tree(local, prefix, last=(RUN_STATE, MARKER))
            except (LladaError, OSError) as exc:
                error = f"converting {self.describe(tag)} to a universal checkpoint failed: {exc}"
        raise_if_any(error, CheckpointError, self.dist.device,
                     f"rank 0 could not convert {self.describe(tag)} (see its log)")
        save = self.run_state(tag).get("upload", "local")
        dest = self.downloads / save / UNIVERSAL / tag
        self.store.download_tree(prefix, dest, refresh=False)
        return dest

    # -- saving -------------------------------------------------------------------------------------
    def save(self, engine, step: int, run_state: dict, keep_last: int,
             save_delay_seconds: float = 0.0) -> CheckpointURI:
        """Write this rank's files locally and start uploading them (rank 0 then publishes)."""
        self.flush()
        tag = tag_for(step)
        complete = all_reduce_sum([1.0 if self.dist.is_main and self.store.exists(f"{tag}/{RUN_STATE}") else 0.0],
                                  self.dist.device)[0]
        if complete:  # saved already (complete checkpoints are never overwritten); make sure it is latest
            if self.dist.is_main:
                latest = self.latest_tag()
                if latest is None or latest < tag:
                    self.store.write_atomic(LATEST, tag.encode())
            barrier()
            return CheckpointURI(self.describe(tag))
        if self.dist.is_main:
            self.store.delete(self.store.list(tag))  # a partial upload of this step from a crashed save
        save = from_main(uuid.uuid4().hex[:12])
        shutil.rmtree(self.stage, ignore_errors=True)
        self.stage.mkdir(parents=True, exist_ok=True)
        barrier()
        engine.save_checkpoint(str(self.stage), tag=tag, save_latest=False, exclude_frozen_parameters=True)
        if save_delay_seconds:
            time.sleep(save_delay_seconds)  # fault injection: a window in which the save is incomplete
        barrier()
        self._errors.clear()
        self._uploader = threading.Thread(target=self._upload, args=(tag, save), daemon=True,
                                          name="llada-checkpoint-upload")
        self._uploader.start()
        if self.dist.is_main:
            state = {**run_state, "upload": save}
            self._publisher = threading.Thread(target=self._publish, args=(tag, save, state, keep_last),
                                               daemon=True, name="llada-checkpoint-publish")
            self._publisher.start()
        return CheckpointURI(self.describe(tag))

    def _upload(self, tag: str, save: str) -> None:
        marker = f"{tag}/{UPLOADS}/{save}/rank-{self.dist.rank}"
        try:
            files = sorted(p for p in (self.stage / tag).rglob("*") if p.is_file())
            for f in files:
                if self.upload_delay_seconds:
                    time.sleep(self.upload_delay_seconds)  # fault injection: a window to kill an upload in
                self.store.upload(f, f"{tag}/{f.relative_to(self.stage / tag).as_posix()}")
            self.store.write_atomic(marker, json.dumps({"files": len(files)}).encode())
            shutil.rmtree(self.stage / tag, ignore_errors=True)
        except Exception as exc:  # reported by flush() on every rank
            self._errors["upload"] = f"uploading rank {self.dist.rank}'s files of {self.describe(tag)} failed: {exc}"
            try:
                self.store.write_atomic(marker + ".failed", str(exc).encode())
            except Exception:
                pass  # the store is unreachable: the publisher's own requests fail too

    def _publish(self, tag: str, save: str, run_state: dict, keep_last: int) -> None:
        try:
            prefix = f"{tag}/{UPLOADS}/{save}"
            while True:
                markers = [n.rsplit("/", 1)[1] for n in self.store.list(prefix)]
                failed = [m for m in markers if m.endswith(".failed")]
                if failed:
                    raise CheckpointError(f"{', '.join(failed)}: an upload of {self.describe(tag)} failed")
                if len(markers) >= self.dist.world:
                    break
                time.sleep(0.2)
            self.store.write_atomic(f"{tag}/{RUN_STATE}", (json.dumps(run_state, indent=1) + "\n").encode())
            self.store.write_atomic(LATEST, tag.encode())
            self._prune(keep_last, tag)
            self.push_logs()
        except Exception as exc:
            self._errors["publish"] = f"publishing {self.describe(tag)} failed: {exc}"

    def _prune(self, keep_last: int, keep: str) -> None:
        names = self.store.list()
        complete = sorted({n.split("/")[0] for n in names if n.count("/") == 1 and n.endswith(f"/{RUN_STATE}")
                           and n.startswith("step-")})
        gone = [t for t in complete[:-keep_last] if t != keep]
        for t in gone:  # run_state.json first: a deletion cut short never leaves a "complete" husk
            self.store.delete([f"{t}/{RUN_STATE}"])
        kept = set(complete) - set(gone)
        doomed = [n for n in names if (n.startswith("step-") and n.split("/")[0] not in kept and n.split("/")[0] != keep)
                  or (n.startswith(f"{UNIVERSAL}/") and n.split("/")[1] not in kept)]
        self.store.delete([n for n in doomed if not n.endswith(f"/{RUN_STATE}") or n.split("/")[0] not in gone])

    def flush(self) -> None:
        """Wait for the upload in flight (every rank) and its publication (rank 0); an error on
        any rank fails every rank. Every rank calls this at the same points."""
        if self._uploader is not None:
            self._uploader.join()
            self._uploader = None
        raise_if_any(self._errors.get("upload"), CheckpointError, self.dist.device,
                     "another rank's checkpoint upload failed (see its log)")
        if self._publisher is not None:
            self._publisher.join()
            self._publisher = None
        raise_if_any(self._errors.get("publish"), CheckpointError, self.dist.device,
                     "rank 0 could not publish the checkpoint (see its log)")
