"""mlgate: an Open Inference Protocol gateway in front of Ray Serve and ONNX Runtime."""

__version__ = "0.1.0"
