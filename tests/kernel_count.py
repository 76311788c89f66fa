"""The aten operations a call dispatches that make new data (views and reshapes left out): on a GPU, each is a
kernel launch, and at small batches the launches, not the arithmetic, bound a pass. The meta device dispatches
the same operations without running any, so a net's launches are counted there in no time."""

from __future__ import annotations

from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

#: operations that only make a view (no kernel on a GPU)
VIEWS = frozenset({"view", "reshape", "_unsafe_view", "unsqueeze", "squeeze", "narrow", "alias", "detach",
                   "flatten", "t", "expand", "permute", "transpose", "as_strided", "slice", "select"})


class KernelCount(TorchDispatchMode):
    """``with KernelCount() as k: f()`` collects in ``k.names`` the operation of every launch, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        if name.rstrip("_") not in VIEWS:
            self.names.append(name)
        return func(*args, **(kwargs or {}))
