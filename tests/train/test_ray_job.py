"""The Ray job's pieces that need no cluster: worker ranges, the elastic policy, argument checks."""

from __future__ import annotations

import pytest

from llada_ds.config import ConfigError, load_run_config
from llada_ds.train.ray_job import allowed_world_sizes, parse_workers


def test_worker_ranges_parse_and_bad_ones_are_named():
    assert parse_workers("4") == (4, 4) and parse_workers("2:8") == (2, 8)
    for bad in ("0", "3:2", "x", "1:2:3", "-1:2"):
        with pytest.raises(ConfigError, match=f"--workers '{bad}'"):
            parse_workers(bad)


def test_only_world_sizes_that_split_the_global_batch_are_allowed(recipe):
    cfg = load_run_config(str(recipe))  # global batch 8, micro batch 2: 1, 2 or 4 workers
    assert allowed_world_sizes(cfg, 1, 6) == [1, 2, 4]
    assert allowed_world_sizes(cfg, 2, 3) == [2]
    with pytest.raises(ConfigError, match=r"cannot be split over 3 worker\(s\).*that work: 1, 2, 4;"):
        allowed_world_sizes(cfg, 3, 4)


def test_the_elastic_policy_rounds_rays_choice_down_to_an_allowed_size(monkeypatch):
    import ray.train.v2.api.data_parallel_trainer as dpt
    from ray.train.v2.api.config import ScalingConfig

    from llada_ds.train.ray_scaling import AllowedSizesElasticPolicy, install

    policy = AllowedSizesElasticPolicy(ScalingConfig(num_workers=(2, 8)), [2, 4, 8])
    # Reserved resources per node, as Ray's autoscaling coordinator reports them; 1 CPU per worker.
    assert policy._count_possible_workers({"a": {"CPU": 3.0}}) == 2
    assert policy._count_possible_workers({"a": {"CPU": 4.0}, "b": {"CPU": 3.0}}) == 4
    assert policy._count_possible_workers({"a": {"CPU": 16.0}}) == 8  # capped at MAX by Ray
    assert policy._count_possible_workers({"a": {"CPU": 1.0}}) == 0  # below MIN: Ray waits
    monkeypatch.setattr(dpt, "create_scaling_policy", dpt.create_scaling_policy)  # restored afterwards
    install([2, 4, 8])
    assert isinstance(dpt.create_scaling_policy(ScalingConfig(num_workers=(2, 8))), AllowedSizesElasticPolicy)
    assert not isinstance(dpt.create_scaling_policy(ScalingConfig(num_workers=2)), AllowedSizesElasticPolicy)


def test_the_driver_refuses_bad_arguments_before_any_worker_starts(recipe, tmp_path, s3):
    from llada_ds.train.ray_job import build_spec, parse_args

    def spec(*argv):
        return build_spec(*parse_args(["--recipe", str(recipe), "--storage", str(tmp_path), *argv]))

    good, cfg = spec("--workers", "1:4", "--train.steps=5")
    assert good.allowed_sizes == [1, 2, 4] and cfg.train.steps == 5 and good.run_dir == str(tmp_path / "recipe")
    bucket = s3.bucket("runs")  # an object store: the run dir is a URI (pathlib would fold its //)
    good, _ = spec("--workers", "2", "--storage", f"s3://{bucket}/runs/")
    assert good.run_dir == f"s3://{bucket}/runs/recipe"
    for argv, message in ((["--workers", "2", "--gpus-per-worker", "8"], "count GPUs with --workers"),
                          (["--workers", "2", "--stop-after", "0"], "--stop-after 0"),
                          (["--workers", "2", "--storage", "s3://no-such-bucket-r/runs"],
                           "s3://no-such-bucket-r: no such bucket"),
                          (["--workers", "2", "--data.train=s3://no-such-bucket-r/train"], "no such bucket"),
                          (["--workers", "2", f"--data.train={tmp_path / 'nowhere'}"], "data.train="),
                          (["--workers", "2", "--train.global_batch=-8"], "global_batch")):
        with pytest.raises(ConfigError, match=message):
            spec(*argv)
