import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llada_ds.diffusion import NoiseConfig, draw_masks, noise_key, pretrain_batch
from llada_ds.diffusion.noise import STREAM_LENGTH, STREAM_MASK

SEED, L = 17, 64


def test_same_sample_same_noise_at_any_batch_position_or_composition():
    a = draw_masks(SEED, 5, [100, 101, 102, 103], L, 1e-3)
    b = draw_masks(SEED, 5, [250, 103, 7, 100, 101], L, 1e-3)
    for row_a, row_b in ((0, 3), (1, 4), (3, 1)):
        assert torch.equal(a.masked[row_a], b.masked[row_b])
        assert a.t[row_a] == b.t[row_b]


def test_noise_changes_with_step_seed_and_index():
    base = draw_masks(SEED, 5, [100], L, 1e-3)
    for other in (draw_masks(SEED, 6, [100], L, 1e-3), draw_masks(SEED + 1, 5, [100], L, 1e-3),
                  draw_masks(SEED, 5, [101], L, 1e-3)):
        assert other.t[0] != base.t[0]


def test_noise_ignores_and_leaves_the_global_generator_alone():
    torch.manual_seed(0)
    a = draw_masks(SEED, 1, [3, 4], L, 1e-3)
    after_a = torch.rand(1)
    torch.manual_seed(999)
    b = draw_masks(SEED, 1, [3, 4], L, 1e-3)
    torch.manual_seed(0)
    assert torch.equal(a.masked, b.masked)
    assert torch.equal(torch.rand(1), after_a)


def test_key_mixes_every_part():
    keys = {noise_key(s, st, step, i) for s in (0, 1) for st in (STREAM_MASK, STREAM_LENGTH)
            for step in (0, 1) for i in (0, 1)}
    assert len(keys) == 16
    assert all(0 <= k < 2**64 for k in keys)
    with pytest.raises(ValueError, match="index"):
        noise_key(0, 1, 0, -5)


def test_every_bit_of_seed_step_and_index_matters():
    # A generator keeping only 32 bits of its seed made these two samples share t and mask.
    a = draw_masks(0, 741, [47474], 4096, 1e-3)
    b = draw_masks(0, 1174, [75187], 4096, 1e-3)
    assert a.t[0] != b.t[0] and not torch.equal(a.masked, b.masked)
    for base, wide in (((5, 1, [9]), (5 + 2**32, 1, [9])), ((5, 1, [9]), (5, 1 + 2**32, [9])),
                       ((5, 1, [9]), (5, 1, [9 + 2**32]))):
        assert draw_masks(*base, 64, 1e-3).t[0] != draw_masks(*wide, 64, 1e-3).t[0]
    with pytest.raises(ValueError, match="step"):
        draw_masks(0, -1, [0], 8, 1e-3)


def test_noise_bit_stream_is_pinned():
    # Resumed runs must see the noise the original run saw, also after upgrading NumPy or torch:
    # these values pin Philox4x64 keyed (seed, stream), counter (0, 0, index, step). If this
    # fails, checkpoints made before the change no longer resume exactly; treat it as a break.
    d = draw_masks(17, 5, [100, 2**40], 12, 1e-3)
    assert d.t.tolist() == pytest.approx([0.6398768424987793, 0.6085568070411682], abs=0)
    assert d.masked.int().tolist() == [[0, 0, 0, 1, 1, 1, 0, 0, 1, 0, 1, 1], [0, 0, 1, 0, 1, 1, 1, 1, 0, 0, 1, 1]]
    from llada_ds.diffusion.noise import draw_random_length

    assert [draw_random_length(17, s, 4096, 0.5) for s in range(6)] == [3983, 1301, 1139, 3497, 580, 4096]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank, world, port, global_indices, step, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(1000 + rank)  # ranks have different global generator states
        mine = global_indices[rank::world]  # a strided split, as a data-parallel sampler would do
        x0 = torch.arange(len(mine) * L).reshape(len(mine), L) % 40
        batch = pretrain_batch(x0, mine, step, 49, NoiseConfig(seed=SEED, random_length_prob=0.5))
        gathered = [None] * world
        dist.all_gather_object(gathered, (mine, batch.masked, batch.t))
        if rank == 0:
            out.put(gathered)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_two_gloo_ranks_draw_what_one_process_draws():
    indices = list(range(40, 48))
    step = 11
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_worker, args=(r, 2, port, indices, step, out)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        gathered = out.get(timeout=240)  # two fresh interpreters import torch: slow on a loaded machine
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)
    # One process, whole global batch, in another order and with the random-length decision
    # also shared (keyed by the step only).
    whole = list(reversed(indices))
    x0 = torch.zeros(len(whole), L, dtype=torch.long)
    single = pretrain_batch(x0, whole, step, 49, NoiseConfig(seed=SEED, random_length_prob=0.5))
    for mine, masked, t in gathered:
        for row, index in enumerate(mine):
            ref_row = whole.index(index)
            assert torch.equal(masked[row], single.masked[ref_row])
            assert t[row] == single.t[ref_row]
