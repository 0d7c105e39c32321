"""imgzoo: train compact image classifiers, export them, serve them.

The `imgzoo` package holds what every part shares and nothing heavy: the command line shell,
the user-facing error type and the model-repository contract (names, manifest schema).
It never imports torch or onnxruntime.
"""

__version__ = "0.1.0"
