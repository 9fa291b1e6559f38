"""Python face of the csrc kernels, and a pure-torch reference of each.

Each kernel ``recis.ops.X`` has ``recis.ops.reference.X`` with the same signature;
the tests compare the two on random inputs.
"""

from recis.ops.bucketize import Buckets, bucketize
from recis.ops.pooled_lookup import MEAN, SUM, pooled_lookup

__all__ = ["MEAN", "SUM", "Buckets", "bucketize", "pooled_lookup"]
