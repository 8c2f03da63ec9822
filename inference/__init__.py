"""Outpost node agent: serves ONNX models over the Open Inference Protocol v2.

`python -m inference serve --models DIR ...` runs it; see `inference/cli.py`. This package
imports no Django and nothing of `console`, `billing` or `fleet` (import-linter enforces it).
"""

__version__ = "0.1.0"
