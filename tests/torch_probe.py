"""Run the ``prototxt2py`` CLI in this process and report, as JSON on stderr's last line, every place in
prototxt2py that executed an ``import torch`` (run by tests/test_torch_free.py in a fresh interpreter).

Why a hook on ``__import__`` rather than ``'torch' in sys.modules`` alone: once one module has imported torch,
later ``import torch`` statements still pass through ``__import__``, so every importer is seen, not only the
first. A site whose import statement is in ``prototxt2py/layers/`` or ``prototxt2py/nn/`` is blamed on the
outermost layer-family module being executed (``prototxt2py/layers/<x>.py``, or any module of the
``prototxt2py/layers/<x>/`` subpackage, at module level) when there is one: those modules are converted to
torch-free specs separately; so is an import under one of the :data:`TRANSITIONAL` fallbacks, blamed on the
family of the layer they build. Any other site has ``family: null``.

Usage: python tests/torch_probe.py ARGS... (the CLI's arguments).
"""

from __future__ import annotations

import atexit
import builtins
import json
import os
import sys

PACKAGE = os.sep + "prototxt2py" + os.sep
LAYERS = PACKAGE + "layers" + os.sep
#: Functions that build a layer's torch module only for specs not converted yet (a ``build_torch`` spec's
#: blobs, an ONNX mapping that reads ``ctx.module``): an import under them is the family's (their ``node``).
TRANSITIONAL = ("_torch_blobs", "_runtime_module")
sites: list[dict] = []
_import = builtins.__import__


def _site() -> dict | None:
    """The prototxt2py frames on the stack of the current import (innermost first), or None if none."""
    frames = []
    fallback = None
    f = sys._getframe(2)
    while f is not None:
        path = f.f_code.co_filename
        if PACKAGE in path and not path.endswith("torch_probe.py"):
            frames.append((path[path.rindex(PACKAGE) + 1:], f.f_code.co_name, f.f_lineno))
            node = f.f_locals.get("node") if f.f_code.co_name in TRANSITIONAL else None
            if node is not None and fallback is None:
                fallback = _family_of_module(type(node.spec).__module__)
        f = f.f_back
    if not frames:
        return None
    if fallback is not None:  # a torch module built for a spec that still needs one (see TRANSITIONAL)
        path, func, line = frames[0]
        return {"at": f"{path.replace(os.sep, '/')}:{line} in {func}", "family": fallback}
    path, func, line = frames[0]
    rel = path.replace(os.sep, "/")
    family = None
    if rel.startswith(("prototxt2py/layers/", "prototxt2py/nn/")):  # else: not the families' to fix
        for outer, name, _ in reversed(frames):  # the family module being imported, outermost first
            family = family or (_family(outer) if name == "<module>" else None)
        family = family or _family(rel)  # an import inside a family's own function
    return {"at": f"{rel}:{line} in {func}", "family": family}


def _family(path: str) -> str | None:
    """``pooling`` for ``prototxt2py/layers/pooling.py``, ``forks`` for any file of the ``layers/forks/``
    subpackage (one family of plugin modules); None for other files and the shared layer modules."""
    rel = path.replace(os.sep, "/")
    if not rel.startswith("prototxt2py/layers/") or rel in ("prototxt2py/layers/__init__.py",
                                                           "prototxt2py/layers/base.py"):
        return None
    first = rel[len("prototxt2py/layers/"):].split("/", 1)[0]
    return first[:-3] if first.endswith(".py") else first


def _family_of_module(module: str) -> str | None:
    """The family of a spec class's module name (``prototxt2py.layers.forks.ssd`` -> ``forks``)."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["prototxt2py", "layers"] else parts[-1]


def _hook(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and (name == "torch" or name.startswith("torch.")):
        site = _site()
        if site is not None and site not in sites:
            sites.append(site)
    return _import(name, globals, locals, fromlist, level)


def _report() -> None:
    sys.stderr.write("\nTORCH-PROBE " + json.dumps({"loaded": "torch" in sys.modules, "sites": sites}) + "\n")


builtins.__import__ = _hook
atexit.register(_report)

if __name__ == "__main__":
    from prototxt2py.cli import main

    sys.argv = ["prototxt2py", *sys.argv[1:]]
    main()
