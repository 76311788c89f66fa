"""No code execution from model files: a scan of the package for the ways Python can run data as code.

Allowed, each for a reason stated here: importing this package's own helper modules and the modules of
plugin helper classes named by installed spec code (``nn/__init__.py``), and ``np.load`` with
``allow_pickle=False``. A ``torch.load`` must pass ``weights_only=True``. Model files never name a module to
import (``Python`` layers are never imported)."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "prototxt2py"
GENERATED = {"proto/caffe_pb2.py"}

FORBIDDEN = {
    "pickle": re.compile(r"^\s*(import\s+(c?pickle|dill|marshal|shelve)\b|from\s+(c?pickle|dill|marshal|shelve)\b)"),
    "pickle call": re.compile(r"\b(pickle|dill|marshal)\.loads?\("),
    "eval/exec": re.compile(r"(?<![\w.])(eval|exec|execfile)\("),
    "compile of source": re.compile(r"(?<![\w.])compile\([^)]*['\"]exec['\"]"),
    "dynamic import": re.compile(r"(__import__\(|importlib\.import_module\(|import_module\()"),
    "np.load with pickles": re.compile(r"np\.load\((?!.*allow_pickle=False)"),
    "torch.load": re.compile(r"torch\.load\((?!.*weights_only=True)"),
    "yaml.load": re.compile(r"yaml\.(unsafe_)?load\("),
    "subprocess shell": re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\("),
}
#: file -> kinds allowed there, and why.
ALLOWED = {
    # the package's own helper modules (module_names() lists files of prototxt2py/nn), and the modules of
    # plugin Call targets ("package.module:Class"), which come from installed spec code, never from a file
    "nn/__init__.py": {"dynamic import"},
    # the literal module name "prototxt2py.train", imported on first use of a solver
    "caffe/__init__.py": {"dynamic import"},
    # optional third-party readers (lmdb, plyvel, h5py...) named by literals at the call sites, never by a file
    "data/_deps.py": {"dynamic import"},
    # a DataLoader worker receives its own data layer object from the parent process (multiprocessing);
    # the bytes never come from, or go to, a file
    "data/loader.py": {"pickle", "pickle call"},
}


def _sources() -> list[tuple[str, str]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel not in GENERATED:
            out.append((rel, path.read_text()))
    return out


def test_no_code_execution_primitives() -> None:
    found = []
    for rel, text in _sources():
        for lineno, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0]
            for kind, pattern in FORBIDDEN.items():
                if pattern.search(code) and kind not in ALLOWED.get(rel, set()):
                    found.append(f"{rel}:{lineno}: {kind}: {line.strip()}")
    assert not found, "\n".join(found)


def test_layer_families_are_imported_explicitly() -> None:
    """Plain import statements: a missing family is an ImportError, never skipped, and nothing is imported
    by a name computed at run time."""
    text = (PACKAGE / "layers/__init__.py").read_text()
    assert "import_module" not in text and "ModuleNotFoundError" not in text
    block = re.search(r"^from \. import \(\n((\s+\w+,\n)+)\)", text, re.M)
    assert block is not None, "the families are one explicit import statement"
    assert {"conv", "forks", "data"} <= set(re.findall(r"\w+", block.group(1)))


def test_scan_catches_what_it_should() -> None:
    bad = ["import pickle", "x = pickle.loads(data)", "eval(text)", "exec(code)", "__import__(name)",
           "np.load(f)", "torch.load(path)", "torch.load(path, weights_only=False)", "os.system(cmd)"]
    for line in bad:
        assert any(p.search(line) for p in FORBIDDEN.values()), line
    good = ["np.load(f, allow_pickle=False)", "torch.load(p, weights_only=True)", "net.eval()", "model.eval()",
            "self.exec_order()"]
    for line in good:
        assert not any(p.search(line) for p in FORBIDDEN.values()), line
