"""Ray Train's elastic scaling, restricted to the world sizes that keep the global batch.

Ray's ElasticScalingPolicy starts as many workers as the cluster holds, anywhere in [MIN, MAX];
our runs need a world size W with global_batch % (W * micro_batch) == 0, so that the batch, and
with it every number of the run, stays the same after a resize. This policy makes the same
decisions as Ray's, rounded down to the nearest allowed size (e.g. 20 GPUs free, sizes 8, 16, 32
allowed: 16 workers start; the other 4 GPUs wait for the next resize check).

Ray 2.60 has no public hook for a custom policy: TorchTrainer builds its policy with the module
level `create_scaling_policy` of ray.train.v2.api.data_parallel_trainer, which `install()`
replaces for jobs that ask for it. Pinned by requirements (ray==2.60.0); if that internal name
moves, `install()` refuses loudly instead of silently running with sizes that break the batch.
"""

from __future__ import annotations

from ray.train.v2._internal.execution.scaling_policy import ElasticScalingPolicy


class AllowedSizesElasticPolicy(ElasticScalingPolicy):
    def __init__(self, scaling_config, allowed: list[int]) -> None:
        super().__init__(scaling_config)
        self.allowed = sorted(allowed)

    def round_down(self, n: int) -> int:
        """The largest allowed world size <= n (0: none fits, Ray waits for more resources)."""
        return max((w for w in self.allowed if w <= n), default=0)

    def _count_possible_workers(self, reserved_resources) -> int:
        return self.round_down(super()._count_possible_workers(reserved_resources))


def install(allowed: list[int]) -> None:
    """Make TorchTrainer.fit() in this process use AllowedSizesElasticPolicy for elastic configs."""
    import ray.train.v2.api.data_parallel_trainer as dpt

    original = getattr(dpt, "create_scaling_policy", None)
    if original is None:
        raise RuntimeError("this Ray version has no ray.train.v2.api.data_parallel_trainer.create_scaling_policy; "
                           "llada-ds's elastic job needs ray==2.60.0 (or use a fixed --workers N)")

    def create(scaling_config):
        if scaling_config.elasticity_enabled:
            return AllowedSizesElasticPolicy(scaling_config, allowed)
        return original(scaling_config)

    dpt.create_scaling_policy = create
