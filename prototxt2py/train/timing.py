"""``caffe time``: per-layer forward and backward times of a net, averaged over iterations.

Each layer runs on detached copies of its bottoms, so its backward is one autograd call that can be timed
alone; the bottoms' gradients are then summed into the gradients of the blobs they came from, as Caffe's
backward pass does layer by layer. Loss tops start with their loss weight as gradient; every layer's backward
is timed, as ``caffe time`` calls each layer's ``Backward`` whether a loss reaches it or not (tops no loss
reaches get zero gradients), so a deploy net shows its backward cost too. Data layers' forward
time is the reader's (one batch); ``Input`` blobs are zeros of their declared shapes, as in Caffe.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..errors import Location, Prototxt2pyError
from .feeding import Feeder, is_data_node


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inputs(net: Any, feeder: Feeder | None, device: torch.device) -> dict[str, torch.Tensor]:
    given = feeder.next() if feeder is not None else {}
    out = {}
    for vid in net.graph.inputs:
        value = net.graph.values[vid]
        if value.blob in given:
            out[value.blob] = given[value.blob].to(device)
        elif value.shape is None or None in value.shape:
            raise Prototxt2pyError(f"the shape of input '{value.blob}' is unknown", Location(net.graph.file))
        else:
            out[value.blob] = torch.zeros(tuple(value.shape), device=device)
    return out


def time_net(path: str, iterations: int, phase: str = "TRAIN", device: str = "cpu", stages: tuple[str, ...] = (),
             level: int = 0) -> str:
    """Caffe's timing report (one line per layer and direction, then the averages), for the net
    ``Net(file, phase, level, stages)`` builds, as ``caffe time`` does."""
    from .. import graph, load
    from ..backends.forward_errors import layer_error
    from ..backends.fusion import INPUT
    from ..reader import read_net

    if iterations < 1:
        raise Prototxt2pyError("--iterations must be at least 1")
    dev = torch.device(device)
    source = read_net(path)
    skeleton = graph(source, phase, stages, level, infer=False)
    feeder = Feeder(skeleton, phase) if any(is_data_node(n) for n in skeleton.nodes) else None
    g = graph(source, phase, stages, level, input_shapes=feeder.shapes() if feeder else None)
    net = load(g).to(dev)
    net.train(phase == "TRAIN")
    steps = list(zip(net._plan, g.nodes, strict=True))
    forward = [0.0] * len(steps)
    backward = [0.0] * len(steps)
    lines = ["Performing Forward"]
    total = 0.0  # the timed iterations, whole (Caffe's total_timer)
    for j in range(iterations + 1):  # the first pass warms up (allocations, oneDNN primitives) and is not counted
        warm = j == 0
        iteration_start = t0 = time.perf_counter()
        inputs = _inputs(net, feeder, dev)
        data_time = time.perf_counter() - t0
        env: dict[str, torch.Tensor] = {}
        for vid in g.inputs:
            env[vid] = inputs[g.values[vid].blob]
        leaves: list[tuple[list[torch.Tensor], tuple[str, ...]]] = []
        for i, (step, node) in enumerate(steps):
            kind, key, ins, outs = step.kind, step.key, step.inputs, step.outputs
            if kind is INPUT:
                forward[i] += 0.0 if warm else data_time / max(1, sum(1 for s, _ in steps if s.kind is INPUT))
                leaves.append(([], ins))
                continue
            # a propagate_down: false bottom gets no gradient (Caffe's bottom_need_backward), so none is timed
            bottoms = [env[v].detach().requires_grad_(env[v].is_floating_point() and j not in step.detach)
                       for j, v in enumerate(ins)]
            _sync(dev)
            t0 = time.perf_counter()
            try:
                produced = net.layers[key](*bottoms)
            except (RuntimeError, ValueError, TypeError, IndexError) as e:  # a batch the net cannot take
                raise layer_error(node, net.layers[key], [tuple(b.shape) for b in bottoms], e) from None
            _sync(dev)
            if not warm:
                forward[i] += time.perf_counter() - t0
            produced = (produced,) if isinstance(produced, torch.Tensor) else tuple(produced)
            for vid, t in zip(outs, produced, strict=False):
                env[vid] = t
            leaves.append((bottoms, ins))
        grads: dict[str, torch.Tensor] = {}
        loss = 0.0
        for blob, w in net.loss_weights.items():
            vid = g.final_value(blob).id
            grads[vid] = torch.full_like(env[vid], float(w))
            loss += float(w) * float(env[vid].detach().sum())
        if warm:  # caffe time's clean pass, then its benchmark
            lines += [f"Initial loss: {loss:g}", "Performing Backward"]
        for i in range(len(steps) - 1, -1, -1):
            step, node = steps[i]
            kind, key, ins, outs = step.kind, step.key, step.inputs, step.outputs
            # every layer's backward runs, as in caffe time (a deploy net's too): tops no loss reaches get zeros
            pairs = [(env[v], grads[v] if v in grads else torch.zeros_like(env[v])) for v in outs
                     if isinstance(env.get(v), torch.Tensor) and env[v].requires_grad]
            if kind == INPUT or not pairs:
                continue
            _sync(dev)
            t0 = time.perf_counter()
            torch.autograd.backward([t for t, _ in pairs], [gr for _, gr in pairs])
            _sync(dev)
            if not warm:
                backward[i] += time.perf_counter() - t0
            bottoms, in_ids = leaves[i]
            for leaf, vid in zip(bottoms, in_ids, strict=True):
                if leaf.grad is not None:
                    grads[vid] = grads[vid] + leaf.grad if vid in grads else leaf.grad
        if warm:
            lines += ["*** Benchmark begins ***", f"Testing for {iterations} iterations."]
        else:
            took = time.perf_counter() - iteration_start
            total += took
            lines.append(f"Iteration: {j} forward-backward time: {took * 1e3:.6g} ms.")
    if feeder is not None:
        feeder.close()
    ms = 1000.0 / iterations
    lines.append("Average time per layer:")
    for i, (_, node) in enumerate(steps):
        lines.append(f"{node.name:>10}\tforward: {forward[i] * ms:.6g} ms.")
        lines.append(f"{node.name:>10}\tbackward: {backward[i] * ms:.6g} ms.")
    fwd, bwd = sum(forward) * ms, sum(backward) * ms
    lines += [f"Average Forward pass: {fwd:.6g} ms.", f"Average Backward pass: {bwd:.6g} ms.",
              f"Average Forward-Backward: {total * ms:.6g} ms.", f"Total Time: {total * 1e3:.6g} ms.",
              "*** Benchmark ends ***"]
    return "\n".join(lines)
