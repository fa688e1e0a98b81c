"""The package version, in the lowest layer so that every module (and the checkpoint and ONNX metadata) can read it."""

__version__ = "0.1.0"
