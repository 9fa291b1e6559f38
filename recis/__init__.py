"""recis: distributed training runtime for large recommendation models."""

from recis import _extension

_extension.load()

__version__ = "0.1.0"
