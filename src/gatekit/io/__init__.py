"""Files: the one atomic writer and checked reader (``files``), saving and loading cells and
layers (``saving``), and weights from and to PyTorch, Keras and ONNX (``interop``)."""
