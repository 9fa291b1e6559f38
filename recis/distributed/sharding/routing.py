"""The input dist's routing: where each key of a batch goes (the plan of
``recis.ops.route``), worked out from the layout once per key order. (Output combining
needs no per-type code either: row-split tables' partial sums add up where their rows
land, see ``output_dist.Assembly``.)"""

from __future__ import annotations

from recis import ops
from recis.distributed.sharding.layout import Layout, ShardedTable
from recis.nn.batch_inputs import MAX_KEY_ORDERS, BatchReader
from recis.sparse import KeyedJaggedTensor


def table_route(table: ShardedTable, slots: list[int]) -> ops.TableRoute:
    """``table``'s ids: row-split tables (row_wise, table_row_wise) by row block, one
    slot per block (mean pooling divides by the FULL bag length here and the shards
    pool with sum); the others whole to every shard (table_wise: one, column_wise: one
    per column chunk). ``slots``: the send-order slot of each of ``table.shards``."""
    rows = table.config.num_embeddings
    if table.splits_rows:
        bounds = [s.row_offset for s in table.shards] + [rows]
        return ops.TableRoute(bounds, [[s] for s in slots], divide=table.mean)
    return ops.TableRoute([0, rows], [slots])


class Router:
    """Routes a batch to the slots of ``layout`` (data-parallel tables excluded) in one
    :func:`recis.ops.route` call: the send buffers of the input dist's all-to-alls. A
    reader of the sharded tables locates their features among the batch's keys and
    names the feature of a bad id.
    """

    def __init__(self, layout: Layout) -> None:
        self.reader = BatchReader([t.config for t in layout.sharded])
        send_order = [(s.table, s.index) for slots in layout.slots_on for s in slots]
        slot_of = {slot: n for n, slot in enumerate(send_order)}
        self._tables = [
            table_route(table, [slot_of[(t, k)] for k in range(len(table.shards))])
            for t, table in enumerate(layout.sharded)
        ]
        self._slot_features = [layout.sharded[t].num_features for t, _ in send_order]
        self._slot_dest = [d for d, slots in enumerate(layout.slots_on) for _ in slots]
        self._plans: dict[tuple[str, ...], ops.RoutingPlan] = {}

    def __call__(self, kjt: KeyedJaggedTensor) -> ops.Routes:
        try:
            return ops.route(
                kjt.values(), kjt.lengths(), kjt.weights_or_none(), kjt.stride(), self._plan(kjt)
            )
        except ValueError:
            self.reader.check_ids(kjt)  # names the feature and table of the bad id
            raise

    def _plan(self, kjt: KeyedJaggedTensor) -> ops.RoutingPlan:
        key_order = tuple(kjt.keys())
        plan = self._plans.get(key_order)
        if plan is None:
            if len(self._plans) >= MAX_KEY_ORDERS:
                self._plans.clear()
            keys: list[tuple[int, int] | None] = [None] * len(key_order)
            for t, features in enumerate(self.reader.feature_keys(kjt)):
                for f, key in enumerate(features):
                    keys[key] = (t, f)
            plan = ops.routing_plan(keys, self._tables, self._slot_features, self._slot_dest)
            self._plans[key_order] = plan
        return plan
