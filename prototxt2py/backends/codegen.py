"""Generated PyTorch source: the IR as one plain, self-contained ``nn.Module`` file.

The emitter walks the IR once, as ``torch.fx``'s code generator walks its graph: every layer's module is the
:class:`~prototxt2py.layers.base.Call` its spec gives (the very object the runtime builds), written as source;
helper classes the net uses are copied verbatim from :mod:`prototxt2py.nn` (only those, with what they need);
identifiers come from one deterministic namespace. Chains of three or more single-input, single-output layers
become ``nn.Sequential`` blocks, the rest one line per layer. The result imports only ``torch`` and the
standard library, and is laid out as ``ruff format`` (default settings) lays it out, so generating twice gives
the same bytes and a formatter finds nothing to change.
"""

from __future__ import annotations

import ast
import builtins
import keyword
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UnsupportedLayerError
from ..ir import Graph, Node
from ..ir.graph import MODULE_ATTRS
from ..layers.base import Call, unsupported_entry
from ..netstate import TRAIN

LINE = 88  # ruff format's default line length
MIN_RUN = 3  # shortest chain emitted as nn.Sequential

# The generated file's own globals (MODULE_ATTRS: the names a submodule must not take).
_FILE_GLOBALS = frozenset({"torch", "nn", "F", "math", "OrderedDict", "self", "annotations"})


class Namespace:
    """Legal, unique Python identifiers for arbitrary Caffe names, in order of request (deterministic)."""

    def __init__(self, reserved: frozenset[str] | set[str] = frozenset()):
        self._taken: set[str] = set(reserved)
        self._reserved = set(reserved)

    def name(self, wanted: str, fallback: str = "x") -> str:
        base = re.sub(r"\W", "_", wanted, flags=re.ASCII).strip("_") or fallback
        if base[0].isdigit():
            base = f"{fallback}_{base}"
        if keyword.iskeyword(base) or keyword.issoftkeyword(base) or hasattr(builtins, base):
            base += "_"
        candidate, i = base, 1
        while candidate in self._taken:
            i += 1
            candidate = f"{base}_{i}"
        self._taken.add(candidate)
        return candidate


def class_name(net_name: str) -> str:
    """``CamelCase`` class name for a net name (``"ResNet-50"`` -> ``ResNet50``, ``"bvlc_googlenet"`` ->
    ``BvlcGooglenet``); ``Net`` when nothing usable is left."""
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", net_name) if p]
    name = "".join(p[:1].upper() + p[1:] for p in parts) or "Net"
    return f"Net{name}" if name[0].isdigit() else name


def file_stem(net_name: str) -> str:
    """``snake_case`` module file name for a net (``"ResNet-50"`` -> ``resnet_50``). A name the file could not
    be imported by, or that would shadow a module it imports, gets ``_net`` (``torch`` -> ``torch_net``: a
    ``torch.py`` beside the script would be imported instead of torch; ``class`` -> ``class_net``)."""
    stem = re.sub(r"[^0-9a-z]+", "_", net_name.lower()).strip("_") or "net"
    if stem[0].isdigit():
        return f"net_{stem}"
    if keyword.iskeyword(stem) or keyword.issoftkeyword(stem) or stem in _SHADOWED:
        return f"{stem}_net"
    return stem


#: modules a generated file (or the script beside it) imports: a file of that name would be imported instead
_SHADOWED = frozenset(sys.stdlib_module_names) | {"torch", "torchvision", "numpy", "onnx", "onnxruntime",
                                                  "prototxt2py", "safetensors"}


# -- source layout ---------------------------------------------------------------------------------------------
@dataclass
class Expr:
    """A call expression ``head(args)`` (args are strings or nested Exprs), laid out as black/ruff would."""

    head: str
    args: list[Any] = field(default_factory=list)
    comments: dict[int, str] = field(default_factory=dict)  # arg index -> comment line above it
    brackets: str = "()"

    @property
    def open(self) -> str:
        return self.head + self.brackets[0]

    def flat(self) -> str:
        return f"{self.open}{', '.join(_flat(a) for a in self.args)}{self.brackets[1]}"


def _flat(a: Any) -> str:
    return a.flat() if isinstance(a, Expr) else a[0] + a[1].flat() if isinstance(a, tuple) else a


def layout(prefix: str, e: Expr, suffix: str, indent: int) -> list[str]:
    """Lines for ``prefix + e + suffix`` at ``indent`` spaces: one line if it fits; else the arguments on one
    indented line; else one argument per line with a trailing comma (a single argument is split inside)."""
    pad = " " * indent
    one = f"{pad}{prefix}{e.flat()}{suffix}"
    if len(one) <= LINE and not e.comments:
        return [one]
    inner = " " * (indent + 4)
    if (prefix.endswith("= ") and len(pad + prefix + e.open) > LINE >= len(pad + prefix + "(")
            and len(inner + e.open) <= LINE):
        # an assignment whose head does not fit even when the arguments are split: ruff parenthesizes the
        # right-hand side and lays it out one level deeper, where the call's head must then fit (never a
        # `return`, nor a target that alone is too long)
        return [f"{pad}{prefix}(", *layout("", e, "", indent + 4), f"{pad}){suffix}"]
    body = ", ".join(_flat(a) for a in e.args)
    if not e.comments and len(inner) + len(body) <= LINE:
        return [f"{pad}{prefix}{e.open}", inner + body, f"{pad}{e.brackets[1]}{suffix}"]
    lines = [f"{pad}{prefix}{e.open}"]
    if len(e.args) == 1 and not e.comments:
        a = e.args[0]
        lines += _arg_lines(a, "", indent + 4)
    else:
        for i, a in enumerate(e.args):
            if i in e.comments:
                lines.append(f"{inner}# {e.comments[i]}")
            lines += _arg_lines(a, ",", indent + 4)
    lines.append(f"{pad}{e.brackets[1]}{suffix}")
    return lines


def _arg_lines(a: Any, suffix: str, indent: int) -> list[str]:
    if isinstance(a, tuple):
        return layout(a[0], a[1], suffix, indent)
    if isinstance(a, Expr):
        return layout("", a, suffix, indent)
    return [" " * indent + a + suffix]


def quoted(text: str) -> str:
    """A string literal in double quotes, as ruff format writes it; every character that is not printable
    ASCII is escaped, so a hostile name cannot end the literal or the line."""
    body = text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return f'"{body}"'


def literal(value: Any) -> str:
    """Source text of a plain constructor argument."""
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return f'float("{value}")'
        return repr(value)
    if isinstance(value, tuple):
        inner = ", ".join(literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, str):
        return quoted(value)
    if isinstance(value, (bool, int)) or value is None:
        return repr(value)
    raise TypeError(f"not a plain constructor argument: {value!r}")


# -- helper sources ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Definition:
    name: str
    source: str
    uses: frozenset[str]
    imports: frozenset[str]  # import statements (as written in its file) of the names it uses


_DEFINITIONS: dict[str, _Definition] | None = None


def helper_definitions() -> dict[str, _Definition]:
    """Top-level definitions of the :mod:`prototxt2py.nn` files, read as text (never imported here)."""
    global _DEFINITIONS
    if _DEFINITIONS is None:
        folder = Path(__file__).resolve().parent.parent / "nn"
        found: dict[str, _Definition] = {}
        for path in sorted(folder.glob("*.py")):
            if not path.name.startswith("_"):
                found.update(_file_definitions(path))
        _DEFINITIONS = found
    return _DEFINITIONS


def _file_definitions(path: Path) -> dict[str, _Definition]:
    """Top-level definitions of one Python file, each with its source, the names it uses and the imports of
    those names."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = ast.parse(text)
    imported = _imported_names(tree)
    found: dict[str, _Definition] = {}
    for stmt in tree.body:
        names = _defined_names(stmt)
        if not names:
            continue
        start = min([stmt.lineno, *(d.lineno for d in getattr(stmt, "decorator_list", []))])
        source = "\n".join(lines[start - 1 : stmt.end_lineno])
        used = {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name)}
        used |= {n.value.id for n in ast.walk(stmt) if isinstance(n, ast.Attribute)
                 and isinstance(n.value, ast.Name)}
        for name in names:
            found[name] = _Definition(name, source, frozenset(used - {name}),
                                      frozenset(imported[n] for n in used if n in imported))
    return found


def plugin_definitions(target: str) -> tuple[str, dict[str, _Definition]]:
    """The class name a plugin target ``"package.module:Class"`` is written as, and the top-level definitions
    of that module's file (read as text: the module is the plugin's installed code, and the runtime imports
    it anyway). Refused with a clear error when the source cannot be copied into a standalone file."""
    import importlib.util
    import sys

    module_name, _, qualname = target.partition(":")
    qualname = qualname.split("#", 1)[0]
    if not qualname.isidentifier():
        raise UnsupportedLayerError(f"generated code cannot include {target}: the helper must be a top-level "
                                    "class or function of an importable module (its source is copied)")
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if file is None:
        try:
            found = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            found = None
        file = found.origin if found is not None else None
    if not file or not str(file).endswith(".py") or not Path(file).is_file():
        raise UnsupportedLayerError(f"generated code cannot include {target}: no Python source file for module "
                                    f"'{module_name}'")
    defs = _file_definitions(Path(file))
    if qualname not in defs:
        raise UnsupportedLayerError(f"generated code cannot include {target}: '{qualname}' is not defined at the "
                                    f"top level of {file}")
    relative = sorted(i for d in defs.values() for i in d.imports if i.startswith("from .") )
    if relative:
        raise UnsupportedLayerError(f"generated code cannot include {target}: {file} uses relative imports "
                                    f"({relative[0]}); a helper copied into a standalone file needs absolute ones")
    return qualname, defs


def _imported_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> the import statement binding it, for a file's top-level imports."""
    out: dict[str, str] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Import):
            for a in stmt.names:
                local = a.asname or a.name.split(".")[0]
                out[local] = f"import {a.name}" + (f" as {a.asname}" if a.asname else "")
        elif isinstance(stmt, ast.ImportFrom) and stmt.module != "__future__":
            module = "." * stmt.level + (stmt.module or "")
            for a in stmt.names:
                out[a.asname or a.name] = f"from {module} import {a.name}" + (f" as {a.asname}" if a.asname
                                                                               else "")
    return out


def _import_bound(defs: Sequence[_Definition]) -> set[str]:
    """The names the import statements of these definitions bind in the generated file."""
    out = set()
    for statement in {imp for d in defs for imp in d.imports}:
        for node in ast.parse(statement).body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                out |= {a.asname or a.name.partition(".")[0] for a in node.names}
    return out


def _import_block(statements: set[str]) -> list[str]:
    """Import lines in isort's order: the standard library, then torch; plain imports before ``from``."""
    def key(line: str) -> tuple:
        module = line.split()[1]
        return (module.split(".")[0] == "torch", line.startswith("from"), module, line)

    stdlib = sorted((s for s in statements if s.split()[1].split(".")[0] != "torch"), key=key)
    third = sorted((s for s in statements if s.split()[1].split(".")[0] == "torch"), key=key)
    return [*stdlib, *([""] if stdlib and third else []), *third]


def _defined_names(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, (ast.ClassDef, ast.FunctionDef)):
        return [stmt.name]
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        return [t.id for t in targets if isinstance(t, ast.Name)]
    return []


def helper_closure(names: Sequence[str], defs: Mapping[str, _Definition] | None = None) -> list[_Definition]:
    """The definitions ``names`` need, transitively, in dependency order (ties by name)."""
    defs = helper_definitions() if defs is None else defs
    needed: set[str] = set()
    stack = list(names)
    while stack:
        n = stack.pop()
        if n in needed or n not in defs:
            continue
        needed.add(n)
        stack.extend(defs[n].uses)
    ordered: list[_Definition] = []
    done: set[str] = set()

    def visit(n: str, seen: frozenset[str]) -> None:
        if n in done or n in seen:
            return
        for dep in sorted(defs[n].uses & needed):
            visit(dep, seen | {n})
        done.add(n)
        if all(d.source != defs[n].source for d in ordered):
            ordered.append(defs[n])

    for n in sorted(needed):
        visit(n, frozenset())
    return ordered


def _helpers_for(targets: Sequence[str]) -> tuple[list[_Definition], dict[str, str]]:
    """The definitions generated code needs for these Call targets (built-in helpers and plugin classes), and
    the name each plugin target is written as. Two different definitions under one name are refused."""
    ordered = helper_closure([t for t in targets if ":" not in t])
    heads: dict[str, str] = {}
    owner = {d.name: "prototxt2py.nn" for d in ordered}  # name -> where its definition came from
    for target in targets:
        if ":" not in target:
            continue
        head, defs = plugin_definitions(target)
        heads[target] = head
        origin = target.partition(":")[0]
        for d in helper_closure([head], defs):
            where = owner.setdefault(d.name, origin)
            if where != origin and all(o.source != d.source for o in ordered if o.name == d.name):
                raise UnsupportedLayerError(f"generated code cannot hold two definitions of '{d.name}' (from "
                                            f"{where} and {origin}); rename one of them")
            if all(o.source != d.source for o in ordered):
                ordered.append(d)
    return ordered, heads


# -- the emitter -------------------------------------------------------------------------------------------------
@dataclass
class GeneratedCode:
    """Generated source and what ties it to the runtime: ``keys`` maps each runtime ``state_dict`` key
    (``layers.<key>.<blob>``) to the generated module's key."""

    source: str
    class_name: str
    keys: dict[str, str]
    inputs: list[str]
    outputs: list[str]


@dataclass
class _Step:
    node: Node
    call: Call | None  # None for input layers
    ident: str = ""


def _calls(graph: Graph) -> list[_Step]:
    missing = []
    steps = []
    for node in graph.nodes:
        if node.spec.is_input(node):
            steps.append(_Step(node, None))
            continue
        if not (node.spec.overrides("module") and node.spec.supports("torch", node)):
            missing.append(unsupported_entry(node))
            continue
        steps.append(_Step(node, node.spec.module(node)))
    if missing:
        raise UnsupportedLayerError("no generated code for: " + ", ".join(missing))
    return steps


def _runs(graph: Graph, steps: list[_Step]) -> list[list[_Step]]:
    """Group layer steps into maximal chains (each link: one output value consumed only by the next layer,
    which has one input and one output, and is not a net output)."""
    outputs = set(graph.outputs)
    groups: list[list[_Step]] = []
    for step in steps:
        node = step.node
        if step.call is None:
            continue
        single = len(node.inputs) == 1 and len(node.outputs) == 1 and not node.stop_gradient
        prev = groups[-1][-1].node if groups else None
        if (single and prev is not None and len(prev.outputs) == 1 and len(prev.inputs) == 1
                and node.inputs[0] == prev.outputs[0] and prev.outputs[0] not in outputs
                and len(readers := graph.values[prev.outputs[0]].consumers) == 1
                and graph.nodes[readers[0]] is node):
            groups[-1].append(step)
        else:
            groups.append([step])
    return groups


def _classifier(graph: Graph, steps: list[_Step]) -> _Step | None:
    """The final classifier: the last layer with parameters whose Call declares its output count, with a
    (N, C) output and only parameter-free layers after it."""
    found = None
    for step in steps:
        if step.call is None:
            continue
        if step.node.param_shapes:
            found = step if step.call.num_outputs is not None else None
    if found is None or len(found.node.outputs) != 1:
        return None
    shape = graph.values[found.node.outputs[0]].shape
    return found if shape is not None and len(shape) == 2 else None


def _argument(value: Any) -> str | Expr:
    """A constructor argument: a tuple of several tuples (a table, e.g. anchor boxes) as an expression that
    wraps one row per line when it does not fit; anything else as its literal."""
    if isinstance(value, tuple) and len(value) > 1 and all(isinstance(v, tuple) for v in value):
        return Expr("", [literal(v) for v in value])
    return literal(value)


def _call_expr(call: Call, override: tuple[str | int, str] | None = None,
               heads: Mapping[str, str] | None = None) -> Expr:
    head = (heads or {}).get(call.target, call.target)
    args: list[Any] = [_argument(a) for a in call.args]
    kwargs: list[tuple[str, Any]] = [(k, _argument(v)) for k, v in call.kwargs]
    if override is not None:
        where, text = override
        if isinstance(where, int):
            args[where] = text
        else:
            kwargs = [(k, text if k == where else v) for k, v in kwargs]
    return Expr(head, args + [(f"{k}=", v) if isinstance(v, Expr) else f"{k}={v}" for k, v in kwargs])


def generate(graph: Graph, name: str | None = None) -> GeneratedCode:
    """The source of a module computing ``graph`` with the same modules as the runtime."""
    graph.require_param_shapes()
    steps = _calls(graph)
    cls = class_name(name if name is not None else graph.name)
    helpers = sorted({s.call.target for s in steps if s.call is not None and not s.call.target.startswith("nn.")})
    defs, heads = _helpers_for(helpers)
    # a net named like a keyword, a builtin, a helper or a name the file imports ("none", "f", "ordered dict")
    bound = _FILE_GLOBALS | set(helper_definitions()) | {d.name for d in defs} | _import_bound(defs)
    while keyword.iskeyword(cls) or keyword.issoftkeyword(cls) or hasattr(builtins, cls) or cls in bound:
        cls += "Net"
    attrs = Namespace(MODULE_ATTRS | _FILE_GLOBALS | {cls})
    local = Namespace(_FILE_GLOBALS | {cls})
    inner = Namespace(MODULE_ATTRS)  # names inside Sequential blocks share one pool (readability)
    groups = _runs(graph, steps)
    whole = len(groups) == 1 and len(groups[0]) >= MIN_RUN
    classifier = _classifier(graph, steps)

    # forward variables: one per Caffe blob (in-place versions reassign it)
    var: dict[str, str] = {}

    def v(vid: str) -> str:
        blob = graph.values[vid].blob
        if blob not in var:
            var[blob] = local.name(blob, "x")
        return var[blob]

    def arg(node: Node, j: int) -> str:  # ``propagate_down: false`` cuts the bottom off autograd
        return f"{v(node.inputs[j])}.detach()" if j in node.stop_gradient else v(node.inputs[j])

    input_vars = [v(vid) for vid in graph.inputs]
    init: list[str] = []
    body: list[str] = []
    keys: dict[str, str] = {}
    runtime_key = _runtime_keys(graph)
    ident_of: dict[int, str] = {}  # by node identity: layer names may repeat
    ctor_params: list[str] = []
    if classifier is not None:
        ctor_params.append(f"num_classes: int = {_num_outputs(classifier.call)}")

    def expr_of(step: _Step) -> Expr:
        override = None
        if step is classifier:
            override = (step.call.num_outputs, "num_classes")
        return _call_expr(step.call, override, heads)

    def note(step: _Step, ident: str) -> str | None:
        return None if ident == step.node.name else f'Caffe layer "{_comment_text(step.node.name)}" ({step.node.type})'

    for group in groups:
        if len(group) >= MIN_RUN:
            first, last = group[0].node, group[-1].node
            block = attrs.name("layers" if whole else f"{first.name}_to_{last.name}", "block")
            items: list[Any] = []
            comments: dict[int, str] = {}
            for i, step in enumerate(group):
                ident = inner.name(step.node.name, "layer")
                ident_of[id(step.node)] = f"{block}.{ident}"
                if (c := note(step, ident)) is not None:
                    comments[i] = c
                items.append((f"{ident}=", expr_of(step)))
                for blob in step.node.spec.node_blob_names(step.node):
                    keys[f"{runtime_key[id(step.node)]}.{blob}"] = f"{block}.{ident}.{blob}"
            seq = Expr("nn.Sequential", [Expr("OrderedDict", items, comments)])
            init += layout(f"self.{block} = ", seq, "", 8)
            body.append(_assign(graph, group[-1].node.outputs, f"self.{block}({arg(first, 0)})", v))
            continue
        for step in group:
            ident = attrs.name(step.node.name, "layer")
            ident_of[id(step.node)] = ident
            if (c := note(step, ident)) is not None:
                init.append(f"        # {c}")
            init += layout(f"self.{ident} = ", expr_of(step), "", 8)
            for blob in step.node.spec.node_blob_names(step.node):
                keys[f"{runtime_key[id(step.node)]}.{blob}"] = f"{ident}.{blob}"
            args = ", ".join(arg(step.node, j) for j in range(len(step.node.inputs)))
            body.append(_assign(graph, step.node.outputs, f"self.{ident}({args})", v))
    init += _ties(graph, ident_of)
    methods = _own_phases(graph, cls, ident_of)
    if methods:
        init.append("        self.train()  # the layers' own phases")

    outputs = [graph.values[o].blob for o in graph.outputs]
    if len(graph.outputs) == 1:
        ret, ret_type = v(graph.outputs[0]), "torch.Tensor"
    else:
        ret = Expr("", [f"{literal(graph.values[o].blob)}: {v(o)}" for o in graph.outputs], brackets="{}")
        ret_type = "dict[str, torch.Tensor]"
    source = _assemble(cls, ctor_params, init, input_vars, body, ret, ret_type, defs, graph, methods)
    inputs = [graph.values[i].blob for i in graph.inputs]
    return GeneratedCode(source, cls, keys, inputs, outputs)


def _num_outputs(call: Call) -> str:
    where = call.num_outputs
    if isinstance(where, int):
        return literal(call.args[where])
    return literal(dict(call.kwargs)[where])


def _comment_text(name: str) -> str:
    """A Caffe name safe inside a one-line comment (control characters escaped)."""
    return name.encode("unicode_escape").decode("ascii")


def _assign(graph: Graph, outs: Sequence[str], rhs: str, v: Any) -> str:
    """One forward line ``targets = self.layer(args)``, split as ruff format splits a long call."""
    head, _, args = rhs.partition("(")
    prefix = f"{', '.join(v(o) for o in outs)} = " if outs else ""
    return "\n".join(layout(prefix, Expr(head, [a for a in args[:-1].split(", ") if a]), "", 8))


def _runtime_keys(graph: Graph) -> dict[int, str]:
    """The runtime's state_dict prefix of each node (by identity: layer names may repeat, keys do not)."""
    return {id(node): f"layers.{key}" for node, key in zip(graph.nodes, graph.layer_keys(), strict=True)}


def _ties(graph: Graph, ident_of: Mapping[int, str]) -> list[str]:
    """Shared parameters (``param { name }``): the later layers use the owner's tensor, as in Caffe. The key of
    a tied blob stays in ``keys``: the generated module's ``state_dict`` lists a shared tensor under each of its
    names (as the runtime's does), and a strict ``load_state_dict`` wants them all."""
    lines = []
    by_unique = dict(zip(graph.unique_names(), graph.nodes, strict=True))  # how ParamInfo names an owner
    for node in graph.nodes:
        names = node.spec.node_blob_names(node) if id(node) in ident_of else ()
        for i, p in enumerate(node.params):
            if p.owner is None or i >= len(names) or id(by_unique[p.owner[0]]) not in ident_of:
                continue
            owner = by_unique[p.owner[0]]
            p.check_one_tensor(node.param_shapes[i], owner.param_shapes[p.owner[1]], node)
            owner_blob = owner.spec.node_blob_names(owner)[p.owner[1]]
            lines.append(f"        self.{ident_of[id(node)]}.{names[i]} = self.{ident_of[id(owner)]}.{owner_blob}")
    return lines


def _own_phases(graph: Graph, cls: str, ident_of: Mapping[int, str]) -> list[str]:
    """A ``train`` override pinning the layers that set their own ``phase`` (``Net::Init`` keeps it), as the
    runtime's ``CaffeNet.train`` does; no lines when no layer sets one."""
    pins = [(ident_of[id(n)], n.own_phase == TRAIN, n.name) for n in graph.nodes
            if n.own_phase is not None and id(n) in ident_of]
    if not pins:
        return []
    lines = [f"    def train(self, mode: bool = True) -> {cls}:",
             '        """Layers that set their own Caffe phase keep it in either mode."""',
             "        super().train(mode)"]
    for ident, training, name in pins:
        lines.append(f"        self.{ident}.train({training})  # {_comment_text(name)}: phase "
                     f"{'TRAIN' if training else 'TEST'}")
    return [*lines, "        return self", ""]


def _assemble(cls: str, ctor_params: list[str], init: list[str], input_vars: list[str], body: list[str],
              ret: Any, ret_type: str, defs: list[_Definition], graph: Graph, methods: list[str]) -> str:
    head = [f'"""{cls}: generated by prototxt2py from the Caffe net {quoted(graph.name)}."""', ""]
    head.append("from __future__ import annotations")
    head.append("")
    statements = {imp for d in defs for imp in d.imports} | {"import torch", "from torch import nn"}
    if "OrderedDict(" in "\n".join(init):
        statements.add("from collections import OrderedDict")
    head += _import_block(statements)
    parts = ["\n".join(head)]
    for d in defs:
        parts.append(d.source)
    params = ", ".join(["self", *ctor_params])
    init_sig = f"    def __init__({params}) -> None:"
    if len(init_sig) > LINE:
        init_sig = "    def __init__(\n" + "".join(f"        {p},\n" for p in ["self", *ctor_params]) + "    ) -> None:"
    fwd_params = ", ".join(["self", *(f"{x}: torch.Tensor" for x in input_vars)])
    fwd_sig = f"    def forward({fwd_params}) -> {ret_type}:"
    if len(fwd_sig) > LINE:
        inner = ", ".join(f"{x}: torch.Tensor" for x in ["self", *input_vars]).replace("self: torch.Tensor", "self")
        if len(inner) + 8 <= LINE:
            fwd_sig = f"    def forward(\n        {inner}\n    ) -> {ret_type}:"
        else:
            fwd_sig = ("    def forward(\n" + "".join(f"        {p},\n" for p in
                       ["self", *(f"{x}: torch.Tensor" for x in input_vars)]) + f"    ) -> {ret_type}:")
    ret_lines = layout("return ", ret, "", 8) if isinstance(ret, Expr) else [f"        return {ret}"]
    cls_lines = [f"class {cls}(nn.Module):", init_sig, "        super().__init__()", *init, "",
                 *methods, fwd_sig, *body, *ret_lines]
    parts.append("\n".join(cls_lines))
    return "\n\n\n".join(parts) + "\n"
