"""Edge deployment: ONNX/TensorRT export, torch-free runners (Python 3.8), benchmark."""
