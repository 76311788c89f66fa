"""Caffe's NetState filtering: which layers exist for a given phase, level and set of stages.

Mirrors ``Net::FilterNet`` / ``Net::StateMeetsRule``: a layer with ``include`` rules exists if any rule
matches; otherwise it exists unless an ``exclude`` rule matches. Having both kinds is an error.
"""

from __future__ import annotations

import operator
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


#: ``NetState.level`` is an int32: the CLI's ``--level`` range (``click.IntRange(*LEVEL_RANGE)``).
LEVEL_RANGE = (-(2**31), 2**31 - 1)


def _integer(value: Any, what: str) -> int:
    """``value`` as an int (numpy integers too); floats, strings and bools refused."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise GraphError(f"{what} must be an integer, got {value!r}") from None


def phase_name(phase: int | None) -> str:
    """A Caffe ``Phase`` value as the name the CLI and readers use (unset reads as TEST, NetState's default)."""
    return "TRAIN" if phase == TRAIN else "TEST"


def stage_option(_ctx: Any, _param: Any, value: Iterable[str]) -> tuple[str, ...]:
    """The CLI's ``--stage`` callback (click's signature): :func:`stages_from_flags`."""
    return stages_from_flags(value)


@dataclass
class State:
    """A NetState with protobuf's has-field semantics: ``phase``/``level`` ``None`` are *unset*.

    Caffe composes states with ``NetState::MergeFrom`` (:meth:`merge`), where a set field wins even at its
    default value: an explicit ``level: 0`` replaces the net file's ``state { level: 2 }`` and an explicit
    ``phase: TEST`` the solver's TRAIN, which a plain ``int`` (0 read as "unset") cannot express. A state that
    filters layers reads unset fields as NetState's defaults (phase TEST, level 0; :meth:`resolved`)."""

    phase: int | None = None
    level: int | None = None
    stages: list[str] = field(default_factory=list)

    @classmethod
    def from_args(cls, phase: str | int = "TEST", level: int | None = 0, stages: Iterable[str] = ()) -> State:
        """A caller's request: phase and (unless ``None``) level set, as ``Net(file, phase, level, stages)``."""
        if isinstance(phase, str):
            key = phase.upper()
            if key not in PHASES:
                raise GraphError(f"unknown phase {phase!r} (expected TRAIN or TEST)")
            phase = PHASES[key]
        if isinstance(phase, (bool, float)) or phase not in (TRAIN, TEST):  # 2.5 or 7 would filter both out
            raise GraphError(f"unknown phase {phase!r} (expected TRAIN or TEST)")
        if level is not None:
            level = _integer(level, "level")
            if not LEVEL_RANGE[0] <= level <= LEVEL_RANGE[1]:
                raise GraphError(f"level {level} is outside NetState's int32 range")
        names = None if isinstance(stages, (str, bytes)) or not isinstance(stages, Iterable) else list(stages)
        if names is None or not all(isinstance(s, str) for s in names):
            raise GraphError(f"stages must be a list of strings, got {stages!r}")
        return cls(phase=int(phase), level=level, stages=names)

    @classmethod
    def of(cls, message: Any) -> State:
        """The fields a ``NetState`` message (a net's ``state``, a solver's ``train_state``/``test_state``) sets."""
        return cls(message.phase if message.HasField("phase") else None,
                   message.level if message.HasField("level") else None, list(message.stage))

    def merge(self, other: State) -> State:
        """``NetState::MergeFrom(other)``: ``other``'s set fields replace ours, its stages are appended (one
        already present is not repeated: rules test membership only, and this keeps a composed state a fixed
        point of :meth:`merged_with_net`)."""
        return State(self.phase if other.phase is None else other.phase,
                     self.level if other.level is None else other.level,
                     self.stages + [s for s in other.stages if s not in self.stages])

    def resolved(self) -> State:
        """Unset fields at NetState's defaults (phase TEST, level 0)."""
        return State(TEST if self.phase is None else self.phase, 0 if self.level is None else self.level,
                     list(self.stages))

    def merged_with_net(self, net: Any) -> State:
        """The state ``net`` is built with: its own ``state {}`` merged with this request. A request from
        :meth:`from_args` sets phase and level, which is Caffe's ``Net(file, phase, level, stages)`` (pycaffe's
        ``caffe.Net``, ``caffe test``/``time``): the caller's phase and level replace the file's, its stages
        are added. A state already composed with the net (:func:`solver_state`) comes back unchanged."""
        return State.of(net.state).merge(self).resolved()

    @property
    def phase_name(self) -> str:
        return phase_name(self.phase)


def solver_state(phase: int, net: Any, override: Any = None) -> State:
    """``Solver::InitTrainNet``/``InitTestNets``: ``{phase}``, merged with the net's own ``state``, then with
    the solver's ``train_state``/``test_state(i)`` (``override``; ``None`` where the solver has no
    test_state), so each may override phase and level (``caffe train`` sets the train_state's level always)."""
    state = State(phase=phase).merge(State.of(net.state))
    return (state if override is None else state.merge(State.of(override))).resolved()


def rule_matches(rule, state: State) -> bool:
    """``Net::StateMeetsRule``."""
    state = state.resolved()
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
