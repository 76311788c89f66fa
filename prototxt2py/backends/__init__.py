"""Backends over the IR: PyTorch runtime, ONNX export, diagrams."""
