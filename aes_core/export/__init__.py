"""Leaving PyTorch: ONNX export + parity, TensorRT engines, the Triton model repository."""
