"""Each sharded type's input routing, by sharding type. (Output combining needs no
per-type code: row-split tables' partial sums add up where their rows land, see
``output_dist.Assembly``.)"""

from recis.distributed.sharding import column_wise, row_wise, table_wise
from recis.distributed.types import COLUMN_WISE, ROW_WISE, TABLE_ROW_WISE, TABLE_WISE

# table_row_wise is row_wise over one node's ranks: the same routing.
ROUTERS = {
    TABLE_WISE: table_wise.route,
    COLUMN_WISE: column_wise.route,
    ROW_WISE: row_wise.route,
    TABLE_ROW_WISE: row_wise.route,
}
