"""Each sharded type's input routing and output combining, by sharding type."""

from recis.distributed.sharding import column_wise, row_wise, table_wise
from recis.distributed.types import COLUMN_WISE, ROW_WISE, TABLE_ROW_WISE, TABLE_WISE

# table_row_wise is row_wise over one node's ranks: the same routing and combining.
ROUTERS = {
    TABLE_WISE: table_wise.route,
    COLUMN_WISE: column_wise.route,
    ROW_WISE: row_wise.route,
    TABLE_ROW_WISE: row_wise.route,
}
COMBINERS = {
    TABLE_WISE: table_wise.combine,
    COLUMN_WISE: column_wise.combine,
    ROW_WISE: row_wise.combine,
    TABLE_ROW_WISE: row_wise.combine,
}
