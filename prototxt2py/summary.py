"""Net summaries: a torchsummary-style table, and the JSON the tests and other tools consume."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the IR imports torch: not needed to refuse a bad file before building one
    from .ir import Graph


def _fmt_shape(shape: tuple[int, ...] | None) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def summary_json(graph: Graph) -> dict[str, Any]:
    """``blob_shapes`` by Caffe blob name, ``param_shapes`` by layer (layers with blobs only; a repeated layer
    name as ``<name>_2``), totals."""
    blob_shapes = {blob: (list(shape) if shape is not None else None) for blob, shape in graph.blob_shapes().items()}
    param_shapes = {key: [list(s) for s in n.param_shapes]
                    for n, key in zip(graph.nodes, graph.unique_names(), strict=True) if n.param_shapes}
    return {
        "name": graph.name,
        "phase": graph.state.phase_name,
        "inputs": [graph.values[v].blob for v in graph.inputs],
        "outputs": [graph.values[v].blob for v in graph.outputs],
        "blob_shapes": blob_shapes,
        "param_shapes": param_shapes,
        "total_params": graph.total_params,
        "total_macs": graph.total_macs,
        "unresolved": graph.unresolved(),
        "warnings": list(graph.warnings),
    }


def summary_table(graph: Graph) -> str:
    """One row per layer: name, type, output shape(s), parameter count, MACs; then totals and notes."""
    rows = [("Layer (type)", "Output shape", "Params", "MACs")]
    for node in graph.nodes:
        shapes = [graph.values[v].shape for v in node.outputs] or [None]
        first = f"{node.name} ({node.type})"
        outs = [_fmt_shape(s) for s in shapes] if node.outputs else ["-"]
        rows.append((first, outs[0], _fmt_int(node.num_params), _fmt_int(node.macs)))
        for extra in outs[1:]:
            rows.append(("", extra, "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    sep = "-" * (sum(widths) + 6)
    lines = [f"Net: {graph.name or '(unnamed)'}  phase: {graph.state.phase_name}", sep]
    for i, r in enumerate(rows):
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}")
        if i == 0:
            lines.append(sep)
    lines.append(sep)
    lines.append(f"Total params: {_fmt_int(graph.total_params)}")
    lines.append(f"Total MACs:   {_fmt_int(graph.total_macs)}")
    ins = ", ".join(f"{graph.values[v].blob} {_fmt_shape(graph.values[v].shape)}" for v in graph.inputs)
    outs = ", ".join(f"{graph.values[v].blob} {_fmt_shape(graph.values[v].shape)}" for v in graph.outputs)
    lines.append(f"Inputs:  {ins or '-'}")
    lines.append(f"Outputs: {outs or '-'}")
    for layer, why in graph.unresolved().items():
        lines.append(f"note: shapes after layer '{layer}' are unknown: {why}")
    return "\n".join(lines)
