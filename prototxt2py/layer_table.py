"""The supported-layers table, derived from the registry (never maintained by hand)."""

from __future__ import annotations

from .layers import PYTHON_REGISTRY, REGISTRY, load_entry_points

BACKENDS = (("shape", "shapes"), ("torch", "PyTorch"), ("onnx", "ONNX"))


def layer_rows() -> list[tuple[str, str, dict[str, bool], str]]:
    load_entry_points()  # installed plugins are listed too
    rows = []
    for name in sorted(REGISTRY, key=str.lower):
        spec = REGISTRY[name]
        if name != spec.type:  # aliases are listed with their spec
            continue
        support = {b: spec.supports(b) for b, _ in BACKENDS}
        rows.append((name, spec.family, support, spec.summary))
    for name in sorted(PYTHON_REGISTRY, key=str.lower):  # Python layers with a spec, by module.Layer
        spec = PYTHON_REGISTRY[name]
        rows.append((f"Python: {name}", spec.family, {b: spec.supports(b) for b, _ in BACKENDS}, spec.summary))
    return rows


def layer_table(markdown: bool = False) -> str:
    rows = layer_rows()
    if markdown:
        head = "| type | family | " + " | ".join(t for _, t in BACKENDS) + " | notes |"
        lines = [head, "|" + "---|" * (len(BACKENDS) + 3)]
        for name, family, support, summary in rows:
            marks = " | ".join("yes" if support[b] else "-" for b, _ in BACKENDS)
            lines.append(f"| {name} | {family} | {marks} | {summary} |")
        return "\n".join(lines)
    width = max((len(r[0]) for r in rows), default=4)
    lines = [f"{'type':<{width}}  " + "  ".join(f"{t:<7}" for _, t in BACKENDS) + "  family"]
    for name, family, support, _ in rows:
        marks = "  ".join(f"{'yes' if support[b] else '-':<7}" for b, _ in BACKENDS)
        lines.append(f"{name:<{width}}  {marks}  {family}")
    python = sum(name.startswith("Python: ") for name, *_ in rows)
    lines.append(f"{len(rows) - python} layer types, {python} Python layer(s) with a spec (by module.Layer)")
    return "\n".join(lines)
