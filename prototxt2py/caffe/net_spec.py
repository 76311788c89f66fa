"""``caffe.net_spec``: write nets in Python (``NetSpec``, ``layers``/``params`` pseudo-modules, ``to_proto``) with
pycaffe's behaviour: automatic names ``<Type><n>`` counted per type in dependency order, ``ntop``, ``in_place``,
keyword arguments routed to the layer's ``<type>_param`` message (or to the layer itself), lists to repeated
fields, dicts to messages.

``L.Convolution(bottom, kernel_size=3, num_output=8)`` returns a :class:`Top`; assigning Tops to a
:class:`NetSpec` names them, and ``to_proto()`` gives the ``NetParameter`` of every layer they need.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

from .proto import caffe_pb2


def param_name_dict() -> dict[str, str]:
    """Layer type -> its parameter field stem, from the schema (``Convolution`` -> ``convolution``): every
    ``<x>_param`` field of LayerParameter whose message is ``<Type>Parameter``."""
    out = {}
    for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if f.name.endswith("_param") and f.message_type is not None and f.message_type.name.endswith("Parameter"):
            out[f.message_type.name[: -len("Parameter")]] = f.name[: -len("_param")]
    return out


def to_proto(*tops: Top) -> Any:
    """A NetParameter with every layer needed to compute ``tops`` (intermediate blobs named automatically)."""
    layers: OrderedDict = OrderedDict()
    autonames: Counter = Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


def assign_proto(proto: Any, name: str, val: Any) -> None:
    """Set field ``name`` of ``proto`` from a Python value: a list fills a repeated field (dicts in it become
    messages), a dict fills a message, anything else is assigned; a single value given for a repeated field
    becomes a one-item list (``kernel_size=3``)."""
    is_repeated_field = hasattr(getattr(proto, name), "extend")
    if is_repeated_field and not isinstance(val, list):
        val = [val]
    if isinstance(val, list):
        if val and isinstance(val[0], dict):
            for item in val:
                proto_item = getattr(proto, name).add()
                for k, v in item.items():
                    assign_proto(proto_item, k, v)
        else:
            getattr(proto, name).extend(val)
    elif isinstance(val, dict):
        for k, v in val.items():
            assign_proto(getattr(proto, name), k, v)
    else:
        setattr(proto, name, val)


class Top:
    """One output blob of a layer (its ``n``-th top)."""

    def __init__(self, fn: Function, n: int):
        self.fn = fn
        self.n = n

    def to_proto(self) -> Any:
        """A NetParameter with every layer needed to compute this top."""
        return to_proto(self)

    def _to_proto(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        return self.fn._to_proto(layers, names, autonames)


class Function:
    """A layer: its type, input Tops and parameters (``ntop`` and ``in_place`` are taken out of them)."""

    def __init__(self, type_name: str, inputs: tuple, params: dict[str, Any]):
        self.type_name = type_name
        for index, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                raise TypeError(f"{type_name} input {index} is not a Top (type is {type(inp)})")
        self.inputs = inputs
        self.params = params
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _get_name(self, names: dict, autonames: Counter) -> str:
        if self not in names and self.ntop > 0:
            names[self] = self._get_top_name(self.tops[0], names, autonames)
        elif self not in names:
            autonames[self.type_name] += 1
            names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _get_top_name(self, top: Top, names: dict, autonames: Counter) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _to_proto(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        if self in layers:
            return
        bottom_names = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottom_names.append(layers[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottom_names)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            for top in self.tops:
                layer.top.append(self._get_top_name(top, names, autonames))
        layer.name = self._get_name(names, autonames)
        for k, v in self.params.items():
            if k.endswith("param"):  # generic *_param fields (and `param`) go on the layer
                assign_proto(layer, k, v)
            else:
                try:
                    assign_proto(getattr(layer, _param_names[self.type_name] + "_param"), k, v)
                except (AttributeError, KeyError):
                    assign_proto(layer, k, v)
        layers[self] = layer


class _NoTop(KeyError, AttributeError):
    """A NetSpec attribute never assigned: pycaffe raises KeyError; AttributeError keeps ``hasattr`` working."""


class NetSpec:
    """Named Tops, assigned as attributes (``n.conv1 = L.Convolution(n.data, ...)``) or items; ``to_proto()``
    gives every layer needed for them, the assigned names naming their blobs and layers."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name: str, value: Any) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        try:
            return self.__dict__["tops"][name]
        except KeyError:
            raise _NoTop(name) from None

    def __setitem__(self, key: str, value: Any) -> None:
        self.__setattr__(key, value)

    def __getitem__(self, item: str) -> Any:
        return self.__getattr__(item)

    # The SSD fork's additions (weiliu89/caffe ``net_spec.py``), which its ``model_libs.py`` builds nets with.
    def __delitem__(self, name: str) -> None:
        del self.tops[name]

    def keys(self) -> list[str]:
        """The assigned names, in assignment order."""
        return list(self.tops)

    def vals(self) -> list[Any]:
        """The assigned Tops, in assignment order."""
        return list(self.tops.values())

    def update(self, name: str, params: dict[str, Any]) -> None:
        """Merge ``params`` into the parameters of the layer that makes top ``name``."""
        self.tops[name].fn.params.update(params)

    def to_proto(self) -> Any:
        names = {v: k for k, v in self.tops.items()}
        autonames: Counter = Counter()
        layers: OrderedDict = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """Pseudo-module: ``layers.<Type>(*bottoms, **params)`` is a Top (a tuple of Tops for ``ntop`` > 1, the
    layer itself for ``ntop=0``)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)

        def layer_fn(*args: Top, **kwargs: Any) -> Any:
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops

        return layer_fn


class Parameters:
    """Pseudo-module of enum constants: ``params.Pooling.MAX`` is ``PoolingParameter.MAX``."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)

        class Param:
            def __getattr__(self, param_name: str) -> Any:
                return getattr(getattr(caffe_pb2, name + "Parameter"), param_name)

        return Param()


_param_names = param_name_dict()
layers = Layers()
params = Parameters()
