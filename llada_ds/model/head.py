"""The output head and its cross-entropy, in chunks of rows: full-vocabulary logits never exist at once.

LLaDA's losses need CE(h_r W^T, y_r) for the n positions they score (masked tokens), W being the
(vocab, d) head. Written plainly (logits, then `F.cross_entropy` on their fp32 copy), autograd
keeps the (n, vocab) logits, their log-softmax and their gradient: at the 8B shape (vocab
126,464) each is ~1 GiB in fp32 for the 2,048 masked rows of one 4,096-token sequence. Here the
rows go through the head in chunks of `chunk_rows`, and only one chunk's logits exist at a time,
in the forward and in the backward (Liger-Kernel's fused linear cross-entropy and Apple's Cut
Cross-Entropy do the same with GPU kernels; this is the portable torch version).

Two ways to ask, one function (`linear_cross_entropy`):

- weighted (`row_weights` given): the loss is sum_r w_r CE_r, w fixed by the forward process
  (1 / (p b l) in pre-training). Its gradient with respect to the logits, w_r (softmax_r -
  onehot(y_r)), is known in the forward, so when gradients are needed the forward computes the
  gradients of h and W chunk by chunk right away and the backward only scales them by the
  incoming gradient: no recomputation, the three matmuls of the plain version. The training
  objectives use this.
- per row (no weights): CE_r for every row, differentiable for any incoming gradient (e.g. the
  difference of ELBOs of a preference loss). The forward keeps each row's log-sum-exp; the
  backward recomputes one chunk's logits at a time (one matmul more than the plain version).

Either way the cross-entropy is computed in fp32 whatever the dtype of h and W, and `correct`
tells whether the argmax of each row's logits is its target (masked-token accuracy). Gradients of
W from different chunks are added into one buffer of W's dtype (in bf16 that is one rounding per
chunk; the default chunk makes few chunks).

Under ZeRO-3 the head's weight exists whole only inside the head module's forward (DeepSpeed
gathers it there), so `OutputHead.forward` is where this runs.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from .layers import Linear

# Bytes of fp32 logits per chunk: 64 MiB is 132 rows at vocab 126,464 (2,048 rows would be 1 GiB),
# enough rows for the matmuls to run at full speed (bench/head_bench.py).
CHUNK_BYTES = 64 * 2**20


class RowLoss(NamedTuple):
    """What the head returns when given targets (a tuple, so that ZeRO-3's hooks see its tensors)."""

    loss: torch.Tensor  # () fp32: sum over rows of w_r CE_r (w_r = 1 without weights); differentiable
    ce: torch.Tensor  # (n,) fp32 per-row cross-entropy; differentiable only without weights
    correct: torch.Tensor  # (n,) bool: the argmax of the row's logits is its target


def rows_per_chunk(vocab_size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    return max(1, chunk_bytes // (4 * vocab_size))


def _chunk_forward(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
    """(exp(z - max) in fp32, the row sums of it, log-sum-exp, CE, correct) of one chunk of rows,
    z = h @ W.T: one chunk-sized fp32 buffer (plus the logits themselves below fp32)."""
    z = h @ weight.t()
    correct = z.argmax(-1) == targets
    z_target = z.gather(1, targets[:, None]).squeeze(1).float()
    zf = z.float()
    del z
    m = zf.amax(-1)
    e = zf.sub_(m[:, None]).exp_()
    total = e.sum(-1)
    lse = total.log() + m
    # log_softmax's own formula: CE = log(sum exp(z - max)) + max - z_target.
    return e, total, lse, lse - z_target, correct


def _chunk_grad(e: torch.Tensor, total: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:
    """d(sum_r scale_r CE_r)/d logits = scale_r (softmax_r - onehot(y_r)), in place of e = exp(z - max)."""
    g = e.div_(total[:, None])
    g[torch.arange(g.shape[0], device=g.device), targets] -= 1
    g.mul_(scale[:, None])
    return g.to(dtype)


def _add_grads(g: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, gh: Optional[torch.Tensor],
               gw: Optional[torch.Tensor]) -> None:
    if gh is not None:
        torch.mm(g, weight, out=gh)
    if gw is not None:
        gw.addmm_(g.t(), h)


class _WeightedCE(torch.autograd.Function):
    """sum_r w_r CE_r with the gradients computed in the forward (see the module docstring)."""

    @staticmethod
    def forward(ctx, h, weight, targets, row_weights, chunk):
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n = h.shape[0]
        ce = torch.empty(n, dtype=torch.float32, device=h.device)
        correct = torch.empty(n, dtype=torch.bool, device=h.device)
        gh = torch.empty_like(h) if want_h else None
        gw = torch.zeros_like(weight) if want_w else None
        w32 = row_weights.float()
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            exp, total, _, ce[s:e], correct[s:e] = _chunk_forward(h[s:e], weight, targets[s:e])
            if want_h or want_w:
                g = _chunk_grad(exp, total, targets[s:e], w32[s:e], weight.dtype)
                _add_grads(g, h[s:e], weight, None if gh is None else gh[s:e], gw)
                del g
            del exp  # before the next chunk's logits exist
        loss = (ce * w32).sum()
        # Kept on ctx rather than saved tensors: the backward scales them in place (a second
        # buffer of W's size is what this function exists to avoid), so it can run only once.
        ctx.grads = (gh, gw)
        ctx.mark_non_differentiable(ce, correct)
        return loss, ce, correct

    @staticmethod
    def backward(ctx, g_loss, _g_ce, _g_correct):
        if ctx.grads is None:
            raise RuntimeError("linear_cross_entropy with row weights supports one backward pass only")
        gh, gw = ctx.grads
        ctx.grads = None
        if gh is not None:
            gh.mul_(g_loss.to(gh.dtype))
        if gw is not None:
            gw.mul_(g_loss.to(gw.dtype))
        return gh, gw, None, None, None


class _RowCE(torch.autograd.Function):
    """CE_r per row; the backward recomputes one chunk's logits at a time."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk):
        n = h.shape[0]
        ce = torch.empty(n, dtype=torch.float32, device=h.device)
        lse = torch.empty(n, dtype=torch.float32, device=h.device)
        correct = torch.empty(n, dtype=torch.bool, device=h.device)
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            _, _, lse[s:e], ce[s:e], correct[s:e] = _chunk_forward(h[s:e], weight, targets[s:e])
        ctx.save_for_backward(h, weight, targets, lse)
        ctx.chunk = chunk
        ctx.mark_non_differentiable(correct)
        return ce, correct

    @staticmethod
    def backward(ctx, g_ce, _g_correct):
        h, weight, targets, lse = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gh = torch.empty_like(h) if want_h else None
        gw = torch.zeros_like(weight) if want_w else None
        g_ce = g_ce.float()
        for s in range(0, h.shape[0], ctx.chunk):
            e = min(s + ctx.chunk, h.shape[0])
            zf = (h[s:e] @ weight.t()).float()
            exp = zf.sub_(lse[s:e, None]).exp_()  # the softmax itself: its rows sum to 1
            g = _chunk_grad(exp, torch.ones_like(lse[s:e]), targets[s:e], g_ce[s:e], weight.dtype)
            del zf, exp
            _add_grads(g, h[s:e], weight, None if gh is None else gh[s:e], gw)
            del g  # before the next chunk's logits exist
        return gh, gw, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         row_weights: Optional[torch.Tensor] = None, chunk_rows: Optional[int] = None) -> RowLoss:
    """Cross-entropy of the logits h @ weight.T against targets, never holding more than one chunk
    of logits.

    h: (n, d); weight: (vocab, d); targets: (n,) long; row_weights: (n,) or None (see the module
    docstring for what each mode computes and costs). chunk_rows: rows per chunk (default: 256
    MiB of fp32 logits).
    """
    if h.dim() != 2 or targets.shape != h.shape[:1]:
        raise ValueError(f"h must be (n, d) and targets (n,), got {tuple(h.shape)} and {tuple(targets.shape)}")
    chunk = chunk_rows or rows_per_chunk(weight.shape[0])
    if torch.is_autocast_enabled(h.device.type):  # compute in the weight's dtype, as without autocast
        with torch.autocast(h.device.type, enabled=False):
            return linear_cross_entropy(h.to(weight.dtype), weight, targets, row_weights, chunk)
    if row_weights is not None:
        if row_weights.shape != targets.shape:
            raise ValueError(f"row_weights must have shape {tuple(targets.shape)}, got {tuple(row_weights.shape)}")
        return RowLoss(*_WeightedCE.apply(h, weight, targets, row_weights, chunk))
    ce, correct = _RowCE.apply(h, weight, targets, chunk)
    return RowLoss(ce.sum(), ce, correct)


def reference_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                            row_weights: Optional[torch.Tensor] = None) -> RowLoss:
    """The same figures written plainly (full logits, F.cross_entropy on their fp32 copy): what
    linear_cross_entropy replaces, kept as the reference of its tests and benchmark."""
    logits = F.linear(h, weight)
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    loss = ce.sum() if row_weights is None else (ce * row_weights.float()).sum()
    return RowLoss(loss, ce, logits.argmax(-1) == targets)


class OutputHead(Linear):
    """The untied output head: logits, or with targets the chunked cross-entropy of its rows."""

    def __init__(self, in_features: int, out_features: int, init_std: float) -> None:
        super().__init__(in_features, out_features, init_std)
        self.chunk_rows: Optional[int] = None  # None: rows_per_chunk(vocab)

    def forward(self, h: torch.Tensor, targets: Optional[torch.Tensor] = None,
                row_weights: Optional[torch.Tensor] = None):
        if targets is None:
            return super().forward(h)
        return linear_cross_entropy(h, self.weight, targets, row_weights, self.chunk_rows)
