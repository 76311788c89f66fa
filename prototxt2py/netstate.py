"""Caffe's NetState filtering: which layers exist for a given phase, level and set of stages.

Mirrors ``Net::FilterNet`` / ``Net::StateMeetsRule``: a layer with ``include`` rules exists if any rule
matches; otherwise it exists unless an ``exclude`` rule matches. Having both kinds is an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import GraphError, Location

TRAIN, TEST = 0, 1
PHASES = {"TRAIN": TRAIN, "TEST": TEST}


def stages_from_flags(values: Iterable[str]) -> tuple[str, ...]:
    """``--stage`` values as Caffe's tools read them (``get_stages_from_flags``: each split at commas), so
    ``--stage a,b`` is two stages as in ``caffe train --stage=a,b``; empty pieces are dropped."""
    return tuple(s for v in values for s in v.split(",") if s)


def stage_option(_ctx: Any, _param: Any, value: Iterable[str]) -> tuple[str, ...]:
    """The CLI's ``--stage`` callback (click's signature): :func:`stages_from_flags`."""
    return stages_from_flags(value)


@dataclass
class State:
    """The NetState a net is instantiated with."""

    phase: int = TEST
    level: int = 0
    stages: list[str] = field(default_factory=list)

    @classmethod
    def from_args(cls, phase: str | int = "TEST", level: int = 0, stages: Iterable[str] = ()) -> State:
        if isinstance(phase, str):
            key = phase.upper()
            if key not in PHASES:
                raise GraphError(f"unknown phase {phase!r} (expected TRAIN or TEST)")
            phase = PHASES[key]
        return cls(phase=int(phase), level=level, stages=list(stages))

    def merged_with_net(self, net) -> State:
        """Caffe starts from the net's own ``state {}`` and overrides phase; level and stages are added."""
        stages = list(net.state.stage) + [s for s in self.stages if s not in net.state.stage]
        level = self.level if self.level else net.state.level
        return State(self.phase, level, stages)

    @property
    def phase_name(self) -> str:
        return "TRAIN" if self.phase == TRAIN else "TEST"


def rule_matches(rule, state: State) -> bool:
    """``Net::StateMeetsRule``."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    if any(s not in state.stages for s in rule.stage):
        return False
    if any(s in state.stages for s in rule.not_stage):
        return False
    return True


def layer_included(layer, state: State, location: Location | None = None) -> bool:
    n_include, n_exclude = len(layer.include), len(layer.exclude)
    if not n_include and not n_exclude:
        return True
    if n_include and n_exclude:
        raise GraphError(
            "layer has both include and exclude rules; specify only one of them", location, layer=layer.name
        )
    if n_include:
        return any(rule_matches(r, state) for r in layer.include)
    return not any(rule_matches(r, state) for r in layer.exclude)
