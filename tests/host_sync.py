"""Count the operations that would copy device data to the host (and so stall an accelerator's queue).

On a GPU, `.item()`, `.tolist()`, `.cpu()`, `bool(t)` / `float(t)` / `int(t)` and the
operations whose output size depends on the data (`nonzero`, boolean-mask indexing,
`masked_select`, `bincount`, `unique`, `repeat_interleave` with tensor repeats) wait for every
queued kernel and copy to the host. On a CPU nothing waits, but the same calls happen: a
`TorchFunctionMode` sees the Python-level ones and a `TorchDispatchMode` the aten-level ones
(also inside autograd's backward, which runs on the calling thread for CPU tensors).

Each event is attributed to the innermost frame of our own code (llada_ds) or of DeepSpeed (else
torch), so that a count can say whose synchronisation it is.

Everything is counted, whether the tensor would live on the host or the device: CPU tensors give
no way to tell. Code that does host-side work on purpose (the diffusion noise, drawn on the
host) therefore does it in numpy, reached through `.numpy()`, which is not counted: it raises on
a device tensor, so it can never be a device-to-host copy.
"""

from __future__ import annotations

import sys
import traceback
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# Python-level methods that hand the host a tensor's data (scalar conversions are counted at the
# aten level instead: they all go through _local_scalar_dense).
PY_METHODS = {"tolist", "cpu"}
# aten ops that read device data on the host: scalar reads and data-dependent output sizes.
ATEN_SYNCS = {"_local_scalar_dense", "nonzero", "masked_select", "bincount", "_unique", "_unique2", "unique_dim",
              "unique_consecutive", "unique_dim_consecutive", "repeat_interleave"}
OWNERS = (("llada_ds", "/llada_ds/"), ("deepspeed", "/deepspeed/"), ("torch", "/torch/"))


def _site() -> tuple[str, str]:
    """(owner, 'file:line function') of the innermost frame of llada_ds or DeepSpeed (else torch)."""
    frames = traceback.extract_stack()[:-3]
    for wanted in (("llada_ds", "deepspeed"), ("torch",)):
        for f in reversed(frames):
            for owner, marker in OWNERS:
                if owner in wanted and marker in f.filename and "/tests/" not in f.filename:
                    return owner, f"{f.filename.split(marker)[-1]}:{f.lineno} {f.name}"
    return "other", ""


class _Functions(TorchFunctionMode):
    def __init__(self, spy: "HostSyncSpy") -> None:
        super().__init__()
        self.spy = spy

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in PY_METHODS:
            self.spy._record(name)
        return func(*args, **(kwargs or {}))


class _Dispatch(TorchDispatchMode):
    def __init__(self, spy: "HostSyncSpy") -> None:
        super().__init__()
        self.spy = spy

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if name in ATEN_SYNCS or (name in ("index", "index_put", "index_put_") and _has_bool_index(args)):
            self.spy._record(f"aten.{name}")
        return func(*args, **(kwargs or {}))


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(t is not None and t.dtype == torch.bool for t in indices)


class HostSyncSpy:
    """with HostSyncSpy() as spy: ...; spy.count("llada_ds"), spy.events"""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []  # (owner, operation, site)
        self._modes = (_Functions(self), _Dispatch(self))
        self._busy = False

    def _record(self, op: str) -> None:
        if self._busy:  # a method counted at the Python level also dispatches: count it once
            return
        self._busy = True
        try:
            owner, site = _site()
            self.events.append((owner, op, site))
        finally:
            self._busy = False

    def __enter__(self) -> "HostSyncSpy":
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for m in reversed(self._modes):
            m.__exit__(*exc)

    def count(self, owner: str | None = None) -> int:
        return sum(1 for o, _, _ in self.events if owner is None or o == owner)

    def functions(self, owner: str) -> set[str]:
        """The names of the functions of `owner` where its events happened."""
        return {site.split(" ")[-1] for o, _, site in self.events if o == owner}

    def summary(self) -> dict:
        """{owner: {"op at site": n}}"""
        out: dict = {}
        for (owner, op, site), n in Counter(self.events).items():
            out.setdefault(owner, {})[f"{op} at {site}"] = n
        return out


if __name__ == "__main__":  # a quick look: python tests/host_sync.py
    with HostSyncSpy() as spy:
        x = torch.randn(4)
        x.sum().item(), x.tolist(), x[x > 0]
    print(spy.summary(), file=sys.stderr)
