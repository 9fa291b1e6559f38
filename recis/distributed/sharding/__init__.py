"""One module per sharding type: its placement (``place``); plus the static ``layout``,
the input ``routing`` of every type, and the three stages every sharded collection
runs: input_dist, lookup, output_dist."""

from recis.distributed.sharding import (
    column_wise,
    data_parallel,
    row_wise,
    table_row_wise,
    table_wise,
)
from recis.distributed.types import (
    COLUMN_WISE,
    DATA_PARALLEL,
    ROW_WISE,
    TABLE_ROW_WISE,
    TABLE_WISE,
)

# sharding type -> place(cfg, ctx) -> list[Shard]
PLACERS = {
    TABLE_WISE: table_wise.place,
    ROW_WISE: row_wise.place,
    COLUMN_WISE: column_wise.place,
    TABLE_ROW_WISE: table_row_wise.place,
    DATA_PARALLEL: data_parallel.place,
}

__all__ = ["PLACERS"]
