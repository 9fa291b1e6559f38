"""Input dist: route a batch's ids to the shards that serve them (by row block for
row-split tables, in one ``recis.ops.route`` call that fills the send buffers), exchange
sizes and error flags, then send lengths + ids and weights with asynchronous
all-to-alls. The receiving side regroups what arrived by local slot, with every slot's
bag offsets."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from recis.distributed.comm import AllToAll, exchange_header
from recis.distributed.sharding.layout import Layout
from recis.distributed.sharding.routing import Router
from recis.nn.batch_inputs import BatchReader, TableInput
from recis.ops import Routes
from recis.sparse import KeyedJaggedTensor

# Header of one rank: [batch, has_weights, then the ids it sends to each (rank, slot),
# slots of rank 0 first, then the ids of each data-parallel table].
_FIXED = 2


@dataclass
class Prepared:
    batch: int
    error: str | None
    has_weights: bool
    routes: Routes | None = None  # the sharded tables' send buffers
    replicated: list[TableInput] = field(default_factory=list)


@dataclass
class Received:
    """What this rank's slots got: per local slot, the ids, bag offsets and weights of
    every source rank concatenated in rank order; and the batch size of each source."""

    batches: list[int]
    ids: list[Tensor]
    offsets: list[Tensor]
    weights: list[Tensor | None]


class InputDist:
    def __init__(
        self,
        layout: Layout,
        rank: int,
        world_size: int,
        group: dist.ProcessGroup | None,
        device: torch.device,
    ) -> None:
        self.layout, self.rank, self.world_size, self.group = layout, rank, world_size, group
        self.device = device
        self._route = Router(layout)
        self._read_replicated = BatchReader(layout.replicated)
        self.slot_column: list[int] = []  # header column of each (rank, slot), rank-major
        for d in range(world_size):
            self.slot_column.append(_FIXED + sum(len(s) for s in layout.slots_on[:d]))
        self.replicated_column = _FIXED + sum(len(s) for s in layout.slots_on)
        self.local_features = [layout.sharded[s.table].num_features for s in layout.slots_on[rank]]

    def prepare(self, kjt: KeyedJaggedTensor) -> Prepared:
        """Validates and routes locally; bad input is recorded, not raised, so that the
        header exchange can tell every rank (no rank is left waiting)."""
        prep = Prepared(kjt.stride(), None, kjt.weights_or_none() is not None)
        try:
            prep.routes = self._route(kjt)
            if self.layout.replicated:
                prep.replicated = [
                    TableInput(ids.long(), lengths.long(), None if w is None else w.float())
                    for ids, lengths, w in self._read_replicated(kjt)
                ]
        except ValueError as e:
            prep.error = str(e)
            prep.routes, prep.replicated = None, []
        return prep

    def header(self, prep: Prepared) -> Tensor:
        values = [prep.batch, int(prep.has_weights)]
        if prep.routes is None:  # sizes are never used: every rank raises after the exchange
            values.extend([0] * (self.replicated_column - _FIXED + len(self.layout.replicated)))
        else:
            values.extend(prep.routes.slot_ids)
            values.extend(r.ids.numel() for r in prep.replicated)
        return torch.tensor(values, dtype=torch.int64, device=self.device)

    def exchange(self, prep: Prepared) -> list[list[int]]:
        """Every rank's header; raises on every rank if any had bad input."""
        return exchange_header(self.header(prep), prep.error, self.group, self.world_size)

    def start(
        self, prep: Prepared, header: list[list[int]], stats: dict[str, int]
    ) -> InputAwaitable:
        """Issues the all-to-alls of lengths + ids and of weights (when any rank needs them)."""
        assert prep.routes is not None  # exchange() raised on every rank otherwise
        weighted = self.layout.needs_weights or any(row[1] for row in header)
        routes, world = prep.routes, range(self.world_size)
        # Ids this rank sends to each dest (its slots' columns of the header).
        sent = [
            sum(routes.slot_ids[c - _FIXED : c - _FIXED + len(self.layout.slots_on[d])])
            for d, c in zip(world, self.slot_column, strict=True)
        ]
        int_splits = [
            self.layout.bags(self.layout.slots_on[d], prep.batch) + sent[d] for d in world
        ]
        batches = [row[0] for row in header]
        # bags[s][j], counts[s][j]: bags and ids that source s sends to local slot j.
        bags = [[n * b for n in self.local_features] for b in batches]
        first = self.slot_column[self.rank]
        counts = [row[first : first + len(self.local_features)] for row in header]
        from_src = [sum(b) + sum(c) for b, c in zip(bags, counts, strict=True)]
        ops_ = [AllToAll(routes.send_ints, int_splits, from_src, self.group, self.world_size)]
        stats["input_dist"] = (self.world_size - 1) * len(header[0]) * 8 + 8 * sum(
            n for d, n in enumerate(int_splits) if d != self.rank
        )
        if weighted:
            send_w = routes.send_weights
            if send_w is None:  # this batch has no weights but another rank's has
                send_w = torch.ones(sum(sent), device=routes.send_ints.device)
            w_from = [sum(c) for c in counts]
            ops_.append(AllToAll(send_w, sent, w_from, self.group, self.world_size))
            stats["input_dist"] += 4 * sum(n for d, n in enumerate(sent) if d != self.rank)
        return InputAwaitable(batches, bags, counts, ops_)


class InputAwaitable:
    def __init__(
        self,
        batches: list[int],
        bags: list[list[int]],
        counts: list[list[int]],
        ops_: list[AllToAll],
    ) -> None:
        self.batches, self.bags, self.counts, self.ops = batches, bags, counts, ops_

    def wait(self) -> Received:
        ints = self.ops[0].wait()
        weights = self.ops[1].wait() if len(self.ops) > 1 else None
        k = len(self.bags[0]) if self.bags else 0
        if not k:
            return Received(self.batches, [], [], [])
        sources = range(len(self.batches))
        slot_ids = [sum(c[j] for c in self.counts) for j in range(k)]
        # Source s sent [lengths of slot 0..k-1, ids of slot 0..k-1].
        pieces = ints.split([n for s in sources for n in self.bags[s] + self.counts[s]])
        ids = torch.cat([pieces[2 * k * s + k + j] for j in range(k) for s in sources])
        # Every slot's offsets from one cumsum: its lengths, preceded by minus the previous
        # slot's id count (0 for the first) so that the running sum restarts at 0.
        restarts = ints.new_tensor([0] + [-n for n in slot_ids[:-1]]).split(1)
        running = torch.cat(
            [t for j in range(k) for t in (restarts[j], *(pieces[2 * k * s + j] for s in sources))]
        ).cumsum(0)
        offsets = running.split([sum(b[j] for b in self.bags) + 1 for j in range(k)])
        slot_weights: list[Tensor | None] = [None] * k
        if weights is not None:
            w_pieces = weights.split([n for c in self.counts for n in c])
            w = torch.cat([w_pieces[k * s + j] for j in range(k) for s in sources])
            slot_weights = list(w.split(slot_ids))
        return Received(self.batches, list(ids.split(slot_ids)), list(offsets), slot_weights)
