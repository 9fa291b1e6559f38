"""Python face of the csrc kernels, and a pure-torch reference of each.

Each kernel ``recis.ops.X`` has ``recis.ops.reference.X`` with the same signature;
the tests compare the two on random inputs.
"""

from recis.ops.cpu_isa import available_cpu_isas
from recis.ops.criteo_text import ParsedLines, parse_criteo_lines, parse_hex_column
from recis.ops.dot_interaction import dot_interaction
from recis.ops.pooled_lookup import MEAN, SUM, pooled_lookup, pooled_lookup_tables
from recis.ops.route import Routes, RoutingPlan, TableRoute, route, routing_plan
from recis.ops.sparse_update import (
    sparse_adagrad_update,
    sparse_adam_update,
    sparse_rowwise_adagrad_update,
    sparse_sgd_update,
    unique_row_grads,
)
from recis.ops.table_memory import empty_table, keep_freed_host_memory

__all__ = [
    "MEAN",
    "SUM",
    "ParsedLines",
    "Routes",
    "RoutingPlan",
    "TableRoute",
    "available_cpu_isas",
    "dot_interaction",
    "empty_table",
    "keep_freed_host_memory",
    "parse_criteo_lines",
    "parse_hex_column",
    "pooled_lookup",
    "pooled_lookup_tables",
    "route",
    "routing_plan",
    "sparse_adagrad_update",
    "sparse_adam_update",
    "sparse_rowwise_adagrad_update",
    "sparse_sgd_update",
    "unique_row_grads",
]
