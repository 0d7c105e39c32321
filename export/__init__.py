"""export part of imgzoo: TorchScript + ONNX export, parity checks, the model repository writer.

Importing the package imports nothing heavy: `export.repository` and `export.errors` are
torch-free so the serving install can read a repository; the modules that export
(`export.api`, `export.onnx_export`, ...) import torch themselves.
"""
