"""The Ray job: the one training loop on every worker of a Ray cluster, through Ray Train (V2).

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python cluster/train.py --recipe llada-8b --workers 8:32 --gpus-per-worker 1 --storage /shared/runs

Ray Train's TorchTrainer starts one worker per GPU (or CPU slot), sets up the process group
(NCCL / gloo) and calls `train_worker` in each; that builds the same Trainer as every other
launcher. What Ray adds is the orchestration:
- FailureConfig: a worker or node that dies makes Ray tear the group down and start it again;
  the loop resumes from the latest complete checkpoint (our atomic `latest` pointer: a save that
  was cut short is never chosen) with data and noise continuing from global counters.
- ScalingConfig(num_workers=(MIN, MAX)): Ray starts as many workers as the cluster can hold,
  rounded down to a size that splits the global batch (ray_scaling.py), and restarts the group
  when nodes leave or join. A new world size resumes through DeepSpeed's universal checkpoint
  (converted once, by rank 0; see elastic.py), with the same global batch and the gradient
  accumulation recomputed.

Checkpoints are written where every worker can read them: `--storage` is either a file system
that all nodes share (NFS, Lustre, a FUSE-mounted bucket, or a local path on a single-node
cluster; the workers check that they all see it) or an object-store URI (s3://bucket/prefix,
gs://...), for nodes that share nothing but the bucket: each worker stages its checkpoint files on
its own disk and uploads them (remote_run.py). The run directory is STORAGE/NAME, the same layout
as the other launchers, so a run can move between Ray, torchrun and the deepspeed launcher.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..config import RunConfig, load_run_config
from ..data.batch import split_batch
from ..data.object_store import ObjectStorage
from ..data.storage import is_uri, join, open_storage
from ..errors import BatchSplitError, ConfigError, StorageError, TrainingError
from ..weights import CHECKPOINTS, LATEST, RUN_STATE, latest_checkpoint, read_run_state
from .distributed import DistInfo, all_reduce_sum, from_main, init_distributed
from .engine import default_ds_config, load_ds_config
from .loop import Trainer
from .preflight import check_run

EXIT_CONFIG, EXIT_FAILED = 2, 1


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs, sent to it as Ray Train's train_loop_config (plain data)."""

    recipe: str
    overrides: list[str]
    run_dir: str
    ds_config: Optional[str]
    min_workers: int
    max_workers: int
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_failures: int = 3
    resize_interval_s: float = 60.0
    stop_after: Optional[int] = None
    name: str = ""
    allowed_sizes: list = field(default_factory=list)  # world sizes in [min, max] that split the batch
    extra_env: dict = field(default_factory=dict)


def parse_workers(text: str) -> tuple[int, int]:
    """'4' -> (4, 4); '2:8' -> (2, 8)."""
    try:
        parts = [int(x) for x in text.split(":")]
    except ValueError:
        raise ConfigError(f"--workers {text!r}: expected N or MIN:MAX (whole numbers)") from None
    if len(parts) == 1:
        parts *= 2
    lo, hi = parts if len(parts) == 2 else (0, -1)
    if len(parts) != 2 or lo < 1 or hi < lo:
        raise ConfigError(f"--workers {text!r}: expected N or MIN:MAX with 1 <= MIN <= MAX")
    return lo, hi


def splits(cfg: RunConfig, world: int) -> bool:
    try:
        split_batch(cfg.train.global_batch, cfg.train.micro_batch, world)
    except BatchSplitError:
        return False
    return True


def allowed_world_sizes(cfg: RunConfig, lo: int, hi: int) -> list[int]:
    """The worker counts in [lo, hi] that split the global batch; refuse a range whose MIN cannot.

    The job only ever runs at these sizes (ray_scaling.py rounds Ray's elastic choice down to
    one), so the global batch, and with it the whole run, is the same at every size.
    """
    allowed = [w for w in range(lo, hi + 1) if splits(cfg, w)]
    if not splits(cfg, lo):
        t = cfg.train
        near = [w for w in range(1, 2 * hi + 1) if splits(cfg, w)]
        raise ConfigError(
            f"--workers {lo}{'' if hi == lo else f':{hi}'}: train.global_batch={t.global_batch} in micro batches of "
            f"{t.micro_batch} cannot be split over {lo} worker(s): the global batch must be a multiple of workers x "
            f"micro batch, so that it (and the training) stays the same at every size. Worker counts that work: "
            f"{', '.join(map(str, near)) or 'none'}; or change train.micro_batch / train.global_batch")
    return allowed


# -- inside each Ray worker -------------------------------------------------------------------------
def _worker_environment(spec: JobSpec) -> None:
    """Rendezvous variables for our entry point, from Ray Train's context (Ray made the group)."""
    import ray.train

    ctx = ray.train.get_context()
    os.environ.update(RANK=str(ctx.get_world_rank()), WORLD_SIZE=str(ctx.get_world_size()),
                      LOCAL_RANK=str(ctx.get_local_rank()), LOCAL_WORLD_SIZE=str(ctx.get_local_world_size()))
    if torch.cuda.is_available():
        import ray.train.torch

        # Ray decides which GPU this worker drives; DeepSpeed picks its device from LOCAL_RANK.
        os.environ["LOCAL_RANK"] = str(ray.train.torch.get_device().index)
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.update(spec.extra_env)


def _check_shared_storage(run_dir: Path, dist: DistInfo) -> None:
    """Refuse storage that not every worker sees (checkpoints would be lost on a restart)."""
    probe = run_dir / "workers" / "storage-probe"
    token = uuid.uuid4().hex  # fresh each attempt: a probe left by an earlier one proves nothing
    if dist.is_main:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text(token)
    token = from_main(token)  # after rank 0 wrote it
    missing = all_reduce_sum([0.0 if probe.is_file() and probe.read_text() == token else 1.0], dist.device)[0]
    if missing:
        raise ConfigError(f"{run_dir}: {int(missing)} worker(s) cannot see what rank 0 wrote there; --storage must "
                          "be a file system shared by every node of the cluster")


def _latest_state(run_dir: str) -> dict:
    """The run state of the run's latest complete checkpoint (with "path": where it is), {} if none."""
    if is_uri(run_dir):
        store = ObjectStorage(join(run_dir, CHECKPOINTS))
        if not store.exists(LATEST):
            return {}
        tag = store.read_bytes(LATEST).decode().strip()
        return {**json.loads(store.read_bytes(f"{tag}/{RUN_STATE}")), "path": store.describe(tag)}
    found = latest_checkpoint(Path(run_dir) / CHECKPOINTS)
    return {**read_run_state(found), "path": str(found)} if found else {}


def _exists(location: str) -> bool:
    """A file or folder (a local path, or any object under a URI prefix)."""
    return bool(ObjectStorage(location).sizes()) if is_uri(location) else Path(location).exists()


def train_worker(config: dict) -> None:
    """Ray Train's train_loop_per_worker: one rank of the run."""
    import ray.train

    warnings.filterwarnings("ignore", category=FutureWarning)  # torch 2.13 vs DeepSpeed's collectives
    spec = JobSpec(**config)
    _worker_environment(spec)
    cfg = load_run_config(spec.recipe, spec.overrides)
    ds_config = load_ds_config(spec.ds_config or default_ds_config())
    dist = init_distributed()  # reuses the process group Ray Train created
    run_dir = spec.run_dir
    if not is_uri(run_dir):  # an object store is one namespace for every node by construction
        _check_shared_storage(Path(run_dir), dist)
    workers = open_storage(join(run_dir, "workers"))
    # Where each rank runs (host, pid): for operators, and for the fault-injection tests.
    workers.write_atomic(f"rank-{dist.rank}.json", (json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "node_id": ray.get_runtime_context().get_node_id(),
         "world_size": dist.world, "time": time.time()}) + "\n").encode())
    trainer = Trainer(cfg, ds_config, run_dir, "auto", dist, on_log=lambda record: ray.train.report(record))
    stop_after = None
    if spec.stop_after is not None:  # counted from where the job started, not from this attempt
        first = json.loads(workers.read_bytes("job-start.json"))["step"]
        stop_after = max(0, first + spec.stop_after - trainer.state.step)
    if stop_after == 0:  # an earlier attempt of this job got there already
        trainer.monitor.close()
        return
    if trainer.run(stop_after) != 0:
        raise TrainingError(f"rank {dist.rank}: training stopped without finishing")
    # Ray Train tears the process group down itself after the function returns.


# -- the driver (`ray job submit ... -- python cluster/train.py`) ------------------------------------
def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="cluster/train.py", description="LLaDA training on a Ray cluster (Ray Train)")
    p.add_argument("--recipe", required=True, help="packaged recipe name (tiny, llada-1b, llada-8b) or a .yaml")
    p.add_argument("--workers", required=True, help="N, or MIN:MAX for an elastic job that follows the cluster's size")
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per worker (default 1 if the cluster has GPUs, else 0: CPU workers with gloo)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per worker (default 1)")
    p.add_argument("--storage", default=os.path.expanduser("~/llada-ds-runs"),
                   help="where run directories go: a file system path every node shares, or an object-store URI "
                        "(s3://bucket/prefix, gs://...) (default ~/llada-ds-runs: one-node clusters only)")
    p.add_argument("--name", default=None, help="run name: the run directory is STORAGE/NAME (default: recipe name); "
                                                "submitting again with the same name resumes the run")
    p.add_argument("--deepspeed_config", "--deepspeed-config", dest="ds_config", default=None,
                   help="DeepSpeed JSON (default: ds_configs/zero3.json on GPU, ds_configs/cpu.json on CPU)")
    p.add_argument("--max-failures", type=int, default=3,
                   help="worker-group restarts after failures before the job gives up (-1: no limit)")
    p.add_argument("--resize-interval", type=float, default=60.0,
                   help="seconds between Ray's checks for a cluster that grew (elastic jobs)")
    p.add_argument("--stop-after", type=int, default=None,
                   help="save and end the job after this many steps (e.g. a time-limited allocation); "
                        "submit again with the same --name to continue")
    return p.parse_known_args(argv)


def build_spec(args: argparse.Namespace, overrides: list[str]) -> tuple[JobSpec, RunConfig]:
    """Validate everything that can be validated before any worker starts (bad input: ConfigError)."""
    storage = args.storage.rstrip("/") if is_uri(args.storage) else \
        str(Path(args.storage.removeprefix("file://")).expanduser().resolve())
    cfg = load_run_config(args.recipe, overrides)
    try:
        if is_uri(storage):
            ObjectStorage(storage).check_bucket()  # a missing bucket or wrong credentials: now, not in a worker
        for key in ("train", "validation", "tokenizer"):  # found here, not after minutes of worker restarts
            value = getattr(cfg.data, key)
            if value and not _exists(value):
                raise ConfigError(f"data.{key}={value}: no such file or directory (the job's nodes must all see it: "
                                  "an object-store URI, a shared file system path, or relative to the submitted "
                                  "working dir)")
    except StorageError as exc:
        raise ConfigError(str(exc)) from None
    check_run(cfg)  # the tokenizer, the attention backend, wandb: before any worker starts
    if args.ds_config is not None and not Path(args.ds_config).is_file():
        raise ConfigError(f"DeepSpeed config {args.ds_config} does not exist")
    lo, hi = parse_workers(args.workers)
    allowed = allowed_world_sizes(cfg, lo, hi)
    if args.gpus_per_worker is not None and not 0 <= args.gpus_per_worker <= 1:
        raise ConfigError(f"--gpus-per-worker {args.gpus_per_worker:g}: a worker is one DeepSpeed rank and drives "
                          "one GPU (or a share of one); count GPUs with --workers instead")
    if args.stop_after is not None and args.stop_after < 1:
        raise ConfigError(f"--stop-after {args.stop_after}: expected a step count >= 1")
    if args.max_failures < -1:
        raise ConfigError(f"--max-failures {args.max_failures}: expected -1 (no limit) or a count >= 0")
    name = args.name or Path(args.recipe).stem
    passthrough = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "LLADA_DS_VERBOSE", "WANDB_API_KEY", "WANDB_MODE")
                   if k in os.environ}
    spec = JobSpec(recipe=str(Path(args.recipe).resolve()) if Path(args.recipe).is_file() else args.recipe,
                   overrides=overrides, run_dir=join(storage, name),
                   ds_config=str(Path(args.ds_config).resolve()) if args.ds_config else None,
                   min_workers=lo, max_workers=hi, gpus_per_worker=args.gpus_per_worker or 0.0,
                   cpus_per_worker=args.cpus_per_worker, max_failures=args.max_failures,
                   resize_interval_s=args.resize_interval, stop_after=args.stop_after, name=name,
                   allowed_sizes=allowed, extra_env=passthrough)
    return spec, cfg


def fit(spec: JobSpec, use_gpu: bool):
    from ray.train import FailureConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = {"CPU": spec.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = spec.gpus_per_worker
    elastic = spec.max_workers > spec.min_workers
    if elastic:
        from .ray_scaling import install

        install(spec.allowed_sizes)  # Ray's choice, rounded down to a size that keeps the batch
    scaling = ScalingConfig(
        num_workers=(spec.min_workers, spec.max_workers) if elastic else spec.min_workers,
        use_gpu=use_gpu, resources_per_worker=resources,
        **({"elastic_resize_monitor_interval_s": spec.resize_interval_s} if elastic else {}),
    )
    trainer = TorchTrainer(
        train_worker, train_loop_config=asdict(spec), scaling_config=scaling,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        # Ray's own bookkeeping (we report no Ray checkpoints): beside the runs, or for a bucket on
        # the driver's disk (Ray would otherwise need its own credentials for pyarrow's client).
        run_config=RayRunConfig(name=spec.name, storage_path=os.path.join(tempfile.gettempdir(), "llada-ds-ray")
                                if is_uri(spec.run_dir) else str(Path(spec.run_dir).parent / ".ray"),
                                failure_config=FailureConfig(max_failures=spec.max_failures)),
    )
    return trainer.fit()


def main(argv: Optional[list[str]] = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        spec, cfg = build_spec(args, overrides)
    except ConfigError as exc:
        print(f"cluster/train.py: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    if not os.environ.get("RAY_ADDRESS"):
        # `ray job submit` sets it; without it ray.init would go looking for (or start) a cluster.
        print("cluster/train.py: error: no Ray cluster to run on (RAY_ADDRESS is not set); submit this with "
              "`ray job submit --address http://HEAD:8265 --working-dir . -- python cluster/train.py ...`, or "
              "set RAY_ADDRESS=HEAD:6379 to drive a running cluster from one of its nodes", file=sys.stderr)
        return EXIT_CONFIG
    import ray
    from ray.train import TrainingFailedError

    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    if args.gpus_per_worker is None:
        spec = JobSpec(**{**asdict(spec), "gpus_per_worker": 1.0 if cluster_gpus else 0.0})
    use_gpu = spec.gpus_per_worker > 0
    # --stop-after counts from the step this job found, whatever restarts happen inside it.
    found = _latest_state(spec.run_dir)
    open_storage(join(spec.run_dir, "workers")).write_atomic("job-start.json", (json.dumps(
        {"step": found.get("step", 0), "time": time.time()}) + "\n").encode())
    print(f"llada-ds ray job: run {spec.run_dir}, {spec.min_workers}"
          f"{'' if spec.max_workers == spec.min_workers else f' to {spec.max_workers}'} worker(s) x "
          f"{f'{spec.gpus_per_worker:g} GPU' if use_gpu else f'{spec.cpus_per_worker:g} CPU'}, "
          f"{cfg.train.steps} steps, up to {spec.max_failures} restart(s)"
          + (f"; sizes that keep the global batch: {', '.join(map(str, spec.allowed_sizes))}"
             if spec.max_workers > spec.min_workers else ""), flush=True)
    try:
        result = fit(spec, use_gpu)
    except TrainingFailedError as exc:
        print(f"cluster/train.py: training failed for good (after up to {spec.max_failures} restart(s)): {exc}",
              file=sys.stderr, flush=True)
        return EXIT_FAILED
    state = _latest_state(spec.run_dir)
    print(f"llada-ds ray job: done at step {state.get('step')} of {cfg.train.steps} on {state.get('world_size')} "
          f"worker(s); checkpoint {state.get('path')}; Ray Train result in {result.path}", flush=True)
    return 0
