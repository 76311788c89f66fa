"""Generated PyTorch source (``convert --to python``): Caffe's numbers from a file that imports only torch.

* Golden suites: each case's generated module and ``.pt`` run in a fresh interpreter where ``prototxt2py``
  cannot be imported (tests/codegen/replay.py); outputs and gradients are compared with Caffe's.
* Corpus: every deploy net the runtime builds generates, passes ``ruff check``/``ruff format --check`` with
  default settings and ``py_compile``, and gives the runtime's outputs on the same inputs.
* Golden text (tests/codegen/*.py.txt) for AlexNet, GoogLeNet and ResNet-50, so any change to the output is
  reviewed as a diff; ``PROTOTXT2PY_REGEN=1`` rewrites them.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from golden import (
    CORPUS,
    SHARED,
    case_params,
    corpus_deploy_params,
    corpus_net_and_inputs,
    meta,
    npz,
    zoo_net_and_inputs,
)
from test_golden_nets import ATOL_MEASURED

import prototxt2py
from prototxt2py.backends.codegen import (
    Expr,
    Namespace,
    class_name,
    file_stem,
    generate,
    helper_definitions,
    layout,
)
from prototxt2py.convert import write_python
from prototxt2py.errors import Prototxt2pyError, UnsupportedLayerError
from prototxt2py.reader import read_net_text

HERE = Path(__file__).resolve().parent
REPLAY = HERE / "codegen" / "replay.py"
RUFF = Path(sys.executable).parent / "ruff"
ZOO_FAST = 40_000_000  # zoo nets under this many MACs replay in the default suite; the rest under -m slow


# -- golden suites through the generated code ----------------------------------------------------------------
def _runtime_net(case: Path):
    m = meta(case)
    if m["suite"] == "zoo":
        net, inputs = zoo_net_and_inputs(case)
        return net, inputs
    if m["suite"] == "nets":
        inputs = npz(case / "inputs.npz")
        net = prototxt2py.load(SHARED / m["prototxt"], weights=SHARED / m["weights"],
                               input_shapes={k: list(v.shape) for k, v in inputs.items()})
        return net, inputs
    weights = case / "weights.caffemodel"
    net = prototxt2py.load(case / "net.prototxt", weights=weights if weights.exists() else None,
                           phase=m.get("phase", "TEST"), stages=m.get("stages", ()), level=m.get("level", 0))
    return net, npz(case / "inputs.npz")


def _job(case: Path, out: Path) -> dict:
    m = meta(case)
    net, inputs = _runtime_net(case)
    folder = out / case.name
    py, pt = write_python(net, folder)
    code = generate(net.graph)
    np.savez(folder / "inputs.npz", **inputs)
    expected = case / "outputs.npz"
    outputs = code.outputs
    grads: dict[str, str] = {}
    reason = ""
    if m.get("backward"):
        seeded = set(m.get("loss_weights", {})) | set(npz(case / "top_diffs.npz"))
        if seeded <= set(outputs):
            for key in npz(case / "grads.npz"):
                kind, _, rest = key.partition("/")
                if kind == "blob":
                    grads[key] = rest
                    continue
                layer, i = rest.rsplit("/", 1)
                node = net.graph.node(layer)
                p = node.params[int(i)] if int(i) < len(node.params) else None
                owner, index = p.owner if p is not None and p.owner is not None else (layer, int(i))
                module = net.layer(owner)
                grads[key] = code.keys[f"layers.{net.layer_keys[owner]}.{module.blob_names[index]}"]
        else:
            reason = f"loss/diff seeded on internal blobs {sorted(seeded - set(outputs))}"
    return {
        "case": case.name, "py": py, "pt": pt, "module": file_stem(net.graph.name), "class": code.class_name,
        "phase": m.get("phase", "TEST"), "inputs": str(folder / "inputs.npz"), "input_names": code.inputs,
        "output_names": outputs, "expected": str(expected), "rtol": m.get("rtol", 1e-5),
        "atol": max(m.get("atol", 1e-6), ATOL_MEASURED.get(case.name, 0.0)),
        "loss_weights": m.get("loss_weights", {}), "grads": grads, "grads_file": str(case / "grads.npz"),
        "top_diffs": str(case / "top_diffs.npz") if (case / "top_diffs.npz").exists() else "",
        "forward_only_reason": reason,
    }


def _replay(params: list, tmp: Path) -> dict[str, tuple[str, dict]]:
    jobs, results = [], {}
    for p in params:
        case = p.values[0]
        try:
            jobs.append(_job(case, tmp))
        except Prototxt2pyError as e:
            results[case.name] = (f"generation failed: {e}", {})
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, str(REPLAY), str(tmp / "jobs.json"), str(tmp / "result.json")], check=True,
                   cwd=tmp, env=env, timeout=1800)
    got = json.loads((tmp / "result.json").read_text())
    for job in jobs:
        results[job["case"]] = (got[job["case"]], job)
    return results


def _zoo_fast(path: Path) -> bool:
    m = meta(path)
    try:
        g = prototxt2py.graph(SHARED / m["prototxt"], input_shapes=m.get("run_input_shapes"))
    except Prototxt2pyError:
        return True
    return g.total_macs < ZOO_FAST


LAYER_CASES = case_params("layers") + case_params("nets")
ZOO_CASES = [p for p in case_params("zoo") if _zoo_fast(p.values[0])]
ZOO_SLOW = [p for p in case_params("zoo") if not _zoo_fast(p.values[0])]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> dict:
    return _replay(LAYER_CASES + ZOO_CASES, tmp_path_factory.mktemp("codegen"))


@pytest.mark.parametrize("case", LAYER_CASES + ZOO_CASES)
def test_generated_module_reproduces_caffe(case: Path, replayed: dict) -> None:
    result, job = replayed[case.name]
    assert result == "ok", result


def test_gradients_checked_on_nearly_every_backward_case(replayed: dict) -> None:
    """Backward cases whose gradient cannot be seeded through the module's outputs (a loss weight on an internal
    blob) are forward-only; they must stay rare."""
    backward = [c for c in (p.values[0] for p in LAYER_CASES) if meta(c).get("backward")]
    forward_only = {c.name: replayed[c.name][1].get("forward_only_reason") for c in backward
                    if replayed[c.name][1] and replayed[c.name][1].get("forward_only_reason")}
    assert len(forward_only) <= len(backward) // 20, forward_only


@pytest.mark.slow
def test_generated_module_reproduces_caffe_on_the_big_zoo(tmp_path: Path) -> None:
    results = _replay(ZOO_SLOW, tmp_path)
    bad = {k: v[0] for k, v in results.items() if v[0] != "ok"}
    assert not bad, bad


# -- corpus: generate, lint, compile, compare with the runtime ---------------------------------------------------
def exec_source(source: str) -> dict:
    """Run generated source as a module namespace (what ``import`` of the written file gives)."""
    namespace: dict = {"__name__": "generated"}
    exec(compile(source, "<generated>", "exec"), namespace)  # noqa: S102 - our own generated code, in tests
    return namespace


def _generated_from_runtime(net, source: str, code) -> torch.nn.Module:
    ns = exec_source(source)
    module = ns[code.class_name]()
    state = net.state_dict()
    module.load_state_dict({new: state[old] for old, new in code.keys.items()}, strict=True)
    return module.train(net.training)


@pytest.mark.parametrize("rel", corpus_deploy_params())
def test_corpus_net_generates_and_matches_the_runtime(rel: str, tmp_path: Path) -> None:
    net, inputs = corpus_net_and_inputs(rel)
    try:
        code = generate(net.graph)
    except UnsupportedLayerError as e:
        pytest.skip(f"no generated code: {e}")
    path = tmp_path / f"{file_stem(net.graph.name)}.py"
    path.write_text(code.source)
    py_compile.compile(str(path), doraise=True)
    _ruff_clean(tmp_path)
    assert generate(net.graph).source == code.source  # deterministic
    module = _generated_from_runtime(net, code.source, code)
    feed = [torch.from_numpy(inputs[n]) for n in code.inputs]
    with torch.no_grad():
        want = net(*feed, all_blobs=True)
        got = module(*feed)
    got = got if isinstance(got, dict) else {code.outputs[0]: got}
    for name in code.outputs:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)


def _ruff_clean(folder: Path) -> None:
    """``ruff check`` and ``ruff format --check`` with ruff's default settings (an isolated config)."""
    if not RUFF.exists():
        pytest.skip("ruff is not installed next to this interpreter")
    for args in (["check", "--isolated"], ["format", "--check", "--isolated"]):
        r = subprocess.run([str(RUFF), *args, str(folder)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


# -- golden text ---------------------------------------------------------------------------------------------------
TEXT_CASES = {
    "alexnet": HERE.parent / "fixtures" / "alexnet" / "deploy.prototxt",
    "googlenet": CORPUS / "BVLC__caffe" / "models" / "bvlc_googlenet" / "deploy.prototxt",
    "resnet50": CORPUS / "KaimingHe__deep-residual-networks" / "prototxt" / "ResNet-50-deploy.prototxt",
}


@pytest.mark.parametrize("name", sorted(TEXT_CASES))
def test_golden_text(name: str) -> None:
    path = TEXT_CASES[name]
    if not path.exists():
        pytest.skip(f"{path} not in this copy of the corpus")
    source = prototxt2py.python_source(path)
    golden = HERE / "codegen" / f"{name}.py.txt"
    if os.environ.get("PROTOTXT2PY_REGEN"):
        golden.write_text(source)
    assert source == golden.read_text(), f"generated source changed: review `diff` against {golden}"


# -- what the generated module supports -----------------------------------------------------------------------------
NET = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "conv3" type: "Convolution" bottom: "conv2" top: "conv3"
        convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv3" top: "fc"
        inner_product_param { num_output: 7 weight_filler { type: "gaussian" std: 0.1 } } }
"""


def _small():
    net = prototxt2py.load(read_net_text(NET))
    code = generate(net.graph)
    return net, code, _generated_from_runtime(net, code.source, code)


def test_a_repeated_layer_name_generates_both_layers() -> None:
    """Caffe lets layer names repeat (here an in-place ReLU pasted twice): both run, under distinct names."""
    relu = 'layer { name: "r" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.5 } }\n'
    text = NET.replace('layer { name: "conv2"', relu + relu + 'layer { name: "conv2"')
    net = prototxt2py.load(read_net_text(text)).eval()
    code = generate(net.graph)
    assert "r=nn.LeakyReLU(0.5)," in code.source and "r_2=nn.LeakyReLU(0.5)," in code.source
    module = _generated_from_runtime(net, code.source, code)
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = net(x)["fc"], module(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # the slope applied twice: 0.25 on negatives
        one = prototxt2py.load(read_net_text(NET.replace('layer { name: "conv2"', relu + 'layer { name: "conv2"')))
        one.load_state_dict(net.state_dict())
        assert not torch.allclose(one.eval()(x)["fc"], want)


def test_chain_becomes_sequential_and_classifier_is_an_argument() -> None:
    net, code, module = _small()
    assert "nn.Sequential(" in code.source and "num_classes: int = 7" in code.source
    ns = exec_source(code.source)
    assert ns[code.class_name](num_classes=3)(torch.zeros(2, 3, 12, 12)).shape == (2, 3)


def test_generated_module_traces_compiles_and_trains() -> None:
    net, code, module = _small()
    x = torch.randn(2, 3, 12, 12)
    traced = torch.fx.symbolic_trace(module)
    torch.testing.assert_close(traced(x), module(x))
    module(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    compiled = torch.compile(module, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), module(x))


def test_namespace_makes_hostile_names_legal_and_unique() -> None:
    ns = Namespace({"self", "forward", "torch"})
    names = ['conv1/3x3', 'conv1_3x3', 'class', 'print', '1x1', '', 'a"b\\\nc', "x');import os#", 'forward', 'é']
    got = [ns.name(n, "layer") for n in names]
    assert len(set(got)) == len(got)
    assert all(g.isidentifier() and g not in ("class", "print", "forward") for g in got), got
    assert got[:2] == ["conv1_3x3", "conv1_3x3_2"] and got[4] == "layer_1x1"
    assert class_name("ResNet-50") == "ResNet50" and class_name("") == "Net" and file_stem("ResNet-50") == "resnet_50"


def test_hostile_names_stay_data(tmp_path: Path) -> None:
    """Layer, blob and net names made of quotes, backslashes, newlines and code never become code."""
    evil = r'x\"\"\"\\n import os; os.system(\'echo pwned\') #'  # prototxt escapes: x"""\n import os...
    text = (f'name: "{evil}"\n'
            'layer { name: "in\\n" type: "Input" top: "class" input_param { shape { dim: 1 dim: 2 } } }\n'
            f'layer {{ name: "{evil}" type: "InnerProduct" bottom: "class" top: "print"\n'
            '        inner_product_param { num_output: 3 } }\n')
    net = prototxt2py.load(read_net_text(text))
    code = generate(net.graph)
    path = tmp_path / "evil.py"
    path.write_text(code.source)
    py_compile.compile(str(path), doraise=True)
    _ruff_clean(tmp_path)
    module = _generated_from_runtime(net, code.source, code)
    torch.testing.assert_close(module(torch.ones(1, 2)), net(torch.ones(1, 2))["print"])


def test_net_names_that_would_hide_a_keyword_builtin_or_import_get_another_class_name() -> None:
    """``none`` wrote ``class None`` (a SyntaxError), ``f`` a class ``F`` that replaced ``torch.nn.functional``
    for the helpers (InnerProduct), ``ordered dict`` one that replaced ``OrderedDict``."""
    pool = ('layer { name: "relu" type: "ReLU" bottom: "conv3" top: "conv3" }\n'
            'layer { name: "pool" type: "Pooling" bottom: "conv3" top: "conv3" '
            'pooling_param { pool: STOCHASTIC kernel_size: 2 } }\n')  # its helper imports typing's Any
    body = NET.split("\n", 1)[1].replace('layer { name: "fc"', pool + 'layer { name: "fc"')
    for name, cls in (("none", "NoneNet"), ("true", "TrueNet"), ("f", "FNet"), ("ordered dict", "OrderedDictNet"),
                      ("exception", "ExceptionNet"), ("any", "AnyNet"), ("torch", "Torch")):
        net = prototxt2py.load(read_net_text(f'name: "{name}"\n' + body)).eval()
        code = generate(net.graph)
        assert code.class_name == cls, (name, code.class_name)
        module = _generated_from_runtime(net, code.source, code)
        x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(module(x), net(x)["fc"], rtol=1e-5, atol=1e-6)


def test_unsupported_layers_reported_together_nothing_written(tmp_path: Path) -> None:
    python = 'type: "Python" python_param { module: "m" layer: "L" } }\n'
    text = NET + f'layer {{ name: "p1" bottom: "fc" top: "p1" {python}'
    text += f'layer {{ name: "p2" bottom: "p1" top: "p2" {python}'
    g = prototxt2py.graph(read_net_text(text))
    with pytest.raises(UnsupportedLayerError, match=r"layer 'p1'.*layer 'p2'"):
        generate(g)


def test_convert_cli_writes_module_and_weights(tmp_path: Path) -> None:
    proto = tmp_path / "small.prototxt"
    proto.write_text(NET)
    net = prototxt2py.load(proto)
    weights = tmp_path / "small.caffemodel"
    prototxt2py.convert.convert_net(net, "caffemodel", weights)
    out = tmp_path / "gen"
    exe = shutil.which("prototxt2py", path=str(Path(sys.executable).parent))
    r = subprocess.run([exe, "convert", str(proto), "--weights", str(weights), "--to", "python", "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["small.pt", "small.py"]
    ns = exec_source((out / "small.py").read_text())
    module = ns["Small"]()
    module.load_state_dict(torch.load(out / "small.pt", weights_only=True))
    x = torch.randn(2, 3, 12, 12)
    torch.testing.assert_close(module(x), net(x)["fc"])
    bad = tmp_path / "afile"
    bad.write_text("")
    r = subprocess.run([exe, "convert", str(proto), "--to", "python", "-o", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "folder" in r.stderr


# -- the runtime's modules are plain: no IR, spec or protobuf references -------------------------------------------
def _plain_module_check(net) -> None:
    from google.protobuf.message import Message

    from prototxt2py.ir import Node
    from prototxt2py.layers.base import LayerSpec

    for name, module in net.layers.named_children():
        for attr, value in vars(module).items():
            assert not isinstance(value, (Node, LayerSpec, Message)), f"{name}.{attr} holds {type(value).__name__}"
        clone = copy.deepcopy(module)
        assert type(clone) is type(module)
        pickle.loads(pickle.dumps(module))


@pytest.mark.parametrize("rel", corpus_deploy_params())
def test_corpus_modules_are_plain(rel: str) -> None:
    try:
        net = prototxt2py.load(CORPUS / rel)
    except Prototxt2pyError as e:
        pytest.skip(str(e))
    _plain_module_check(net)


def test_helper_definitions_are_unique_and_torch_only() -> None:
    """prototxt2py/nn files and the fork plugins' helper modules (prototxt2py/layers/forks/*_nn.py) import only
    torch, math and the standard library, and define unique names (the generated file is one namespace)."""
    import ast

    folder = HERE.parent / "prototxt2py" / "nn"
    forks = sorted((HERE.parent / "prototxt2py" / "layers" / "forks").glob("*_nn.py"))
    assert forks
    seen: dict[str, str] = {}
    for path in [*sorted(folder.glob("*.py")), *forks]:
        if path.name.startswith("_"):
            continue
        tree = ast.parse(path.read_text())
        for stmt in ast.walk(tree):
            if isinstance(stmt, ast.Import):
                mods = [a.name for a in stmt.names]
            elif isinstance(stmt, ast.ImportFrom):
                mods = [stmt.module or ""]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                assert top == "torch" or top in sys.stdlib_module_names, f"{path.name} imports {mod}"
        for stmt in tree.body:
            if isinstance(stmt, (ast.ClassDef, ast.FunctionDef)):
                assert stmt.name not in seen, f"{stmt.name} in {path.name} and {seen[stmt.name]}"
                seen[stmt.name] = path.name
    assert {n for n, f in seen.items() if not f.endswith("_nn.py")} <= set(helper_definitions())
    r = subprocess.run([str(RUFF), "format", "--check", str(folder)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
    r = subprocess.run([str(RUFF), "format", "--check", "--config", str(folder / "ruff.toml"), *map(str, forks)],
                       capture_output=True, text=True)  # the helper files' layout rules, wherever they live
    assert r.returncode == 0, r.stdout


def test_ir_and_layer_specs_never_import_torch() -> None:
    """The IR, the layer specs and code generation are torch-free: ``import prototxt2py.ir`` and building a graph
    of a net using every family leave torch out of ``sys.modules`` (a fresh interpreter)."""
    script = (
        "import sys, prototxt2py.ir, prototxt2py.layers, prototxt2py.backends.codegen as cg, prototxt2py\n"
        f"g = prototxt2py.graph({str(TEXT_CASES['googlenet'])!r})\n"
        "assert len(g.nodes) > 100\n"
        "print('torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


@pytest.mark.parametrize("target, head, args", [
    ("x_" * 22, "self." + "y_" * 26, ["z_" * 20]),  # head too long: ruff parenthesizes the right-hand side
    ("x_" * 22, "self." + "y_" * 38, ["z_" * 20]),  # ... unless the call's head does not fit inside either
    ("self." + "x_" * 38, "nn.Sequential", ["a_" * 10, "b_" * 10]),  # nor when the target alone is too long
    ("x_" * 10, "self." + "y_" * 10, ["z_" * 20, "w_" * 30]),  # plain split of the arguments
])
def test_long_statements_are_laid_out_as_ruff_formats_them(target: str, head: str, args: list, tmp_path: Path) -> None:
    lines = ["class A:", "    def f(self):", *layout(f"{target} = ", Expr(head, args), "", 8)]
    lines += layout("return ", Expr(head, args), "", 8)
    (tmp_path / "a.py").write_text("\n".join(lines) + "\n")
    if not RUFF.exists():
        pytest.skip("ruff is not installed next to this interpreter")
    r = subprocess.run([str(RUFF), "format", "--diff", "--isolated", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("layer", ['layer { name: "s" type: "Slice" bottom: "data" top: "a" }',
                                   'layer { name: "s" type: "Split" bottom: "data" top: "a" }'])
def test_a_one_top_slice_or_split_gives_a_tensor(layer: str) -> None:
    """Caffe allows one top (MinTopBlobs 1): the module gives the tensor, so the generated ``a = self.s(data)``
    feeds the next layer (it was a 1-tuple, and the ReLU after it raised)."""
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }\n'
            + layer + '\nlayer { name: "r" type: "ReLU" bottom: "a" top: "b" }\n')
    net = prototxt2py.load(read_net_text(text))
    code = generate(net.graph)
    module = _generated_from_runtime(net, code.source, code)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(module(x), torch.relu(x))
    torch.testing.assert_close(net(x)["b"], torch.relu(x))


def test_propagate_down_false_detaches_the_bottom_in_both_modules() -> None:
    """``propagate_down: false`` cuts the gradient into that bottom: the runtime passes it detached and the
    generated source says ``.detach()``, so ``conv1`` gets no gradient through ``a`` (only through ``b``) in
    both, and the layer's own parameters still get theirs."""
    text = '''name: "cut"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "conv1" type: "InnerProduct" bottom: "data" top: "h" inner_product_param { num_output: 4 } }
layer { name: "a" type: "InnerProduct" bottom: "h" top: "a" propagate_down: false
  inner_product_param { num_output: 4 } }
layer { name: "b" type: "AbsVal" bottom: "h" top: "b" }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s" propagate_down: true propagate_down: false }
'''
    net = prototxt2py.load(read_net_text(text)).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p)
    code = generate(net.graph)
    assert "self.a(h.detach())" in code.source and "self.sum_(a, b.detach())" in code.source
    module = _generated_from_runtime(net, code.source, code)
    x = torch.randn(2, 3)
    net(x)["s"].sum().backward()
    module(x).sum().backward()
    for m in (net, module):
        grads = {n.split(".")[-2]: p.grad for n, p in m.named_parameters()}
        assert grads["a"] is not None and grads["a"].abs().sum() > 0  # the layer still learns
    torch.testing.assert_close(module.a.weight.grad, net.layer("a").weight.grad)
    # nothing reaches conv1: through a it is cut, through b (AbsVal) the sum cuts it
    assert all(p.grad is None or not p.grad.any() for n, p in net.named_parameters() if "conv1" in n)
    assert all(p.grad is None or not p.grad.any() for n, p in module.named_parameters() if "conv1" in n)


def test_unknown_shapes_are_named_not_an_index_error() -> None:
    """A net whose shapes stop at a data layer reading files: ``python_source`` names the layer that cannot be
    sized and the one that stopped inference, as the runtime does (it raised IndexError)."""
    text = ('layer { name: "data" type: "ImageData" top: "data" top: "label" image_data_param { source: "list.txt" '
            'batch_size: 1 } }\n'
            'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 '
            'kernel_size: 1 } }\n')
    g = prototxt2py.graph(read_net_text(text, "net.prototxt"))
    with pytest.raises(Prototxt2pyError, match=r"net.prototxt:2:7: layer 'conv': cannot size this layer's "
                                               r"parameters: shapes are unknown from layer 'data'"):
        prototxt2py.python_source(g)
