"""Scoring new essays: one interface, an in-process ONNX Runtime and a Triton implementation."""
