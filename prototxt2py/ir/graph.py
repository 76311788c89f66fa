"""The IR's data: layers as nodes, blob versions as values, and the graph holding them.

These are plain data classes. Nodes point at their layer spec (``node.spec``) but nothing here imports the
specs: specs depend on the graph types, never the other way round, and building (:mod:`.build`) is what
ties the two together.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import Location, ShapeError, UnsupportedLayerError
from ..netstate import State
from ..textformat import DroppedField

if TYPE_CHECKING:  # pragma: no cover
    from ..layers.base import LayerSpec

Shape = tuple[int, ...]

#: Public attribute names of torch's ``nn.Module``, ``nn.ModuleDict`` and ``nn.Sequential`` (torch 2.5-2.13): a
#: submodule may not take one (``add_module`` raises), so layer keys and generated identifiers avoid them, and
#: every name starting with ``_`` too. Written out because the IR does not import torch.
MODULE_ATTRS = frozenset(
    """T_destination add_module append apply bfloat16 buffers call_super_init children clear compile cpu cuda
    double dump_patches eval extend extra_repr float forward get_buffer get_extra_state get_parameter
    get_submodule half insert ipu items keys load_state_dict modules mtia named_buffers named_children
    named_modules named_parameters parameters pop register_backward_hook register_buffer register_forward_hook
    register_forward_pre_hook register_full_backward_hook register_full_backward_pre_hook
    register_load_state_dict_post_hook register_load_state_dict_pre_hook register_module register_parameter
    register_state_dict_post_hook register_state_dict_pre_hook requires_grad_ set_extra_state set_submodule
    share_memory smart_apply state_dict to to_empty train training type update values xpu zero_grad""".split()
)


@dataclass
class Value:
    id: str
    blob: str
    producer: str | None
    version: int = 0
    shape: Shape | None = None
    #: positions in ``Graph.nodes`` of the layers reading this value, in order (not names: Caffe lets layer
    #: names repeat, e.g. a pasted in-place ReLU, and a name would then stand for either layer)
    consumers: list[int] = field(default_factory=list)


@dataclass
class ParamInfo:
    """One parameter blob of a layer: its Caffe ``param {}`` spec and how it is shared."""

    lr_mult: float = 1.0
    decay_mult: float = 1.0
    name: str = ""
    #: whether the spec sets ``lr_mult``/``decay_mult`` (Caffe: a shared blob takes the first set value)
    lr_mult_set: bool = False
    decay_mult_set: bool = False
    share_mode: int = 0  # 0 STRICT, 1 PERMISSIVE
    owner: tuple[str, int] | None = None  # (layer's unique name, blob index) this blob is shared from, if not its own

    def check_one_tensor(self, mine: Iterable[int], owners: Iterable[int], node: Node) -> None:
        """Refuse a share the torch backends cannot hold as one tensor: Caffe's ``share_mode: PERMISSIVE`` lets
        blobs of one count and different shapes share (``Net::AppendParam``), each layer seeing its own shape."""
        mine, owners = tuple(mine), tuple(owners)
        if mine != owners:
            owner = self.owner[0] if self.owner else ""
            raise UnsupportedLayerError(
                f"parameter '{self.name}' has shape {mine} here and {owners} in layer '{owner}' (share_mode: "
                "PERMISSIVE): the PyTorch runtime shares parameters of one shape only", node.location, layer=node.name)


@dataclass
class Node:
    name: str
    type: str
    spec: LayerSpec
    proto: Any  # the source caffe_pb2.LayerParameter (V2): read only by writers of Caffe files, never by specs
    attrs: Any
    bottoms: list[str]
    tops: list[str]
    inputs: list[str]  # value ids
    outputs: list[str]  # value ids
    location: Location
    loss_weights: list[float] = field(default_factory=list)
    params: list[ParamInfo] = field(default_factory=list)
    param_shapes: list[Shape] = field(default_factory=list)
    in_shapes: list[Shape | None] = field(default_factory=list)  # bottom shapes, set by shape inference
    dropped: list[DroppedField] = field(default_factory=list)
    shape_note: str | None = None
    macs: int = 0
    #: bottoms (by position) written ``propagate_down: false``: no gradient reaches them through this layer
    stop_gradient: tuple[int, ...] = ()
    #: the layer's own ``phase`` (netstate's TRAIN/TEST), which ``Net::Init`` keeps over the net's; else None
    own_phase: int | None = None
    #: the phase the layer runs in (its own, else the net's): what a Python layer's ``self.phase`` reads in setup
    phase: int | None = None

    @property
    def in_place(self) -> bool:
        return len(self.bottoms) == 1 and len(self.tops) == 1 and self.bottoms[0] == self.tops[0]

    @property
    def num_params(self) -> int:
        """Parameters this layer owns (blobs shared from another layer are not counted)."""
        return sum(_prod(shape) for i, shape in enumerate(self.param_shapes)
                   if not (i < len(self.params) and self.params[i].owner is not None))


@dataclass
class Graph:
    name: str
    state: State
    nodes: list[Node]
    values: dict[str, Value]
    inputs: list[str]
    outputs: list[str]
    file: str = "<string>"
    force_backward: bool = False
    warnings: list[str] = field(default_factory=list)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def layer_keys(self) -> list[str]:
        """One identifier per node, unique even where Caffe layer names repeat: the name with ``.`` as ``_``
        (torch module names cannot hold dots), ``_`` appended to a name torch's modules use themselves
        (``forward_``, ``training_``, ``__init___``), then ``_2``, ``_3``... on a clash. The runtime's submodules
        and the generated code's ``.pt`` are keyed this way."""
        taken: set[str] = set()
        keys = []
        for node in self.nodes:
            base = node.name.replace(".", "_") or "layer"
            if base in MODULE_ATTRS or base.startswith("_"):
                base += "_"
            key, i = base, 1
            while key in taken:
                i += 1
                key = f"{base}_{i}"
            taken.add(key)
            keys.append(key)
        return keys

    def unique_names(self) -> list[str]:
        """Each layer's Caffe name, a repeated one made unique as ``<name>_2``, ``_3``... skipping every name a
        layer already has: the keys of files that list layers by name (safetensors, ``summary --json``)."""
        taken = {node.name for node in self.nodes}
        seen: set[str] = set()
        out = []
        for node in self.nodes:
            name = node.name
            if name in seen:
                i = 2
                while f"{node.name}_{i}" in taken:
                    i += 1
                name = f"{node.name}_{i}"
                taken.add(name)
            seen.add(node.name)
            out.append(name)
        return out

    def final_value(self, blob: str) -> Value:
        """The last version of a Caffe blob (what Caffe reports under that name after a forward pass)."""
        found = None
        for v in self.values.values():
            if v.blob == blob and (found is None or v.version > found.version):
                found = v
        if found is None:
            raise KeyError(blob)
        return found

    def blob_shapes(self) -> dict[str, Shape | None]:
        """Shape of every Caffe blob by name (final version), in order of first appearance."""
        out: dict[str, Shape | None] = {}
        for v in self.values.values():
            out[v.blob] = v.shape
        return out

    @property
    def total_params(self) -> int:
        return sum(n.num_params for n in self.nodes)

    @property
    def total_macs(self) -> int:
        return sum(n.macs for n in self.nodes)

    def unresolved(self) -> dict[str, str]:
        """Layers whose shapes could not be inferred, with the reason."""
        return {n.name: n.shape_note for n in self.nodes if n.shape_note}

    def require_param_shapes(self) -> None:
        """Raise a ShapeError naming the first layer with blobs whose shapes are unknown, and the layer that
        stopped shape inference: parameter blobs are sized from inferred shapes (what the runtime, the blob
        store and generated code all need)."""
        unresolved = self.unresolved()
        if not unresolved:
            return
        for node in self.nodes:
            if node.spec.blob_names and not node.param_shapes:
                layer, why = next(iter(unresolved.items()))
                raise ShapeError(f"cannot size this layer's parameters: shapes are unknown from layer '{layer}' on "
                                 f"({why})", node.location, layer=node.name)


def _prod(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
