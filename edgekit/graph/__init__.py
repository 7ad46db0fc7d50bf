"""ONNX-only graph work: chainable passes, TensorRT targets and the op-support check (no TensorFlow)."""
