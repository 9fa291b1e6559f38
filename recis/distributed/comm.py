"""Collectives of a sharded lookup: the per-step header exchange (sizes + error flags)
and all-to-alls issued asynchronously, with autograd so that backward sends the
gradients back the way the forward came."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


class DistributedInputError(ValueError):
    """Bad input found on some rank; raised on every rank, naming that rank."""


def rank_and_world(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """This rank and the group's size; (0, 1) when no process group is initialised."""
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def group_timeout(group: dist.ProcessGroup | None) -> timedelta | None:
    """How long ``group``'s collectives wait for a missing rank (None if torch does not say).

    A group made with ``dist.new_group`` gets torch's default (30 min), not the
    timeout of the group it copies: pass this to keep that one.
    """
    pg = group if group is not None else dist.group.WORLD
    for device in ("cpu", "cuda"):
        try:  # a private attribute: torch has no public getter for it
            return pg._get_backend(torch.device(device)).options._timeout
        except (AttributeError, RuntimeError):
            continue
    return None


def all_gather_objects(obj: Any, group: dist.ProcessGroup | None = None) -> list[Any]:
    """``obj`` (picklable) of every rank of ``group``, in rank order; ``[obj]`` alone."""
    world = rank_and_world(group)[1]
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj, group=group)
    return out


def exchange_header(
    header: Tensor, error: str | None, group: dist.ProcessGroup | None, world_size: int
) -> list[list[int]]:
    """All-gathers each rank's small int64 ``header`` (sizes of what it will send) plus an
    error flag, before any data moves. If any rank found bad input, every rank raises
    the same :class:`DistributedInputError` naming it, so no rank is left waiting in a
    later collective. Returns every rank's header, read to the host in one go."""
    row = torch.cat([header.new_tensor([1 if error else 0]), header])
    if world_size == 1:
        rows = [row.tolist()]
    else:
        parts = [torch.empty_like(row) for _ in range(world_size)]
        dist.all_gather(parts, row, group=group)
        rows = torch.stack(parts).tolist()
    if any(r[0] for r in rows):
        messages: list[Any] = [None] * world_size
        if world_size == 1:
            messages = [error]
        else:
            dist.all_gather_object(messages, error, group=group)
        bad = [f"rank {r}: {m}" for r, m in enumerate(messages) if m]
        raise DistributedInputError("bad sharded-embedding input on " + "; ".join(bad))
    return [r[1:] for r in rows]


class AllToAll:
    """One ``all_to_all_single`` in flight: ``wait()`` returns the received tensor.

    Rows of ``send`` (first dim) go to ranks in order, ``send_splits[d]`` to rank d;
    ``recv_splits[s]`` rows arrive from rank s.
    """

    def __init__(
        self,
        send: Tensor,
        send_splits: list[int],
        recv_splits: list[int],
        group: dist.ProcessGroup | None,
        world_size: int,
    ) -> None:
        self.recv = send.new_empty((sum(recv_splits), *send.shape[1:]))
        self.work = None
        if world_size == 1:
            self.recv = send
        else:
            self.work = dist.all_to_all_single(
                self.recv, send.contiguous(), recv_splits, send_splits, group=group, async_op=True
            )

    def wait(self) -> Tensor:
        if self.work is not None:
            self.work.wait()
            self.work = None
        return self.recv


class GradArrival:
    """Hands the gradients' all-to-all of a pooled exchange, issued in backward but not
    waited for, to whoever reads the gradients: the sparse optimizer, long after. The
    exchange then runs behind the rest of backward (the dense layers, DDP's all-reduce)
    and the dense optimizer step, instead of stopping backward until it lands.

    Example::

        >>> arrival = GradArrival()
        >>> # lookup(..., arrival) and OutputDist.start(..., arrival) share it; the
        >>> # lookup's backward records gradients that call arrival.wait() when read.
    """

    def __init__(self) -> None:
        self._op: AllToAll | None = None

    def expect(self, op: AllToAll) -> None:
        self._op = op

    def wait(self) -> None:
        if self._op is not None:
            self._op.wait()
            self._op = None


class PooledAllToAll:
    """State shared by the two autograd halves of one pooled all-to-all; backward leaves
    the wait for the gradients to the reader of ``arrival``."""

    def __init__(
        self,
        send_splits: list[int],
        recv_splits: list[int],
        group: dist.ProcessGroup | None,
        world_size: int,
        grad_scale: float,
        stats: dict[str, int],
        self_rank: int,
        arrival: GradArrival,
    ) -> None:
        self.send_splits, self.recv_splits = send_splits, recv_splits
        self.arrival = arrival
        self.group, self.world_size = group, world_size
        self.grad_scale, self.stats, self.rank = grad_scale, stats, self_rank
        self.forward_op: AllToAll | None = None
        self.backward_op: AllToAll | None = None

    def remote(self, splits: list[int], row_bytes: int) -> int:
        return sum(n for r, n in enumerate(splits) if r != self.rank) * row_bytes


class _Start(torch.autograd.Function):
    """Issues the all-to-all; the output is the receive buffer, valid after _Wait."""

    @staticmethod
    def forward(ctx: Any, send: Tensor, anchor: Tensor, state: PooledAllToAll) -> Tensor:
        ctx.state = state
        state.forward_op = AllToAll(
            send, state.send_splits, state.recv_splits, state.group, state.world_size
        )
        row = send[0].numel() * send.element_size() if send.dim() > 1 else send.element_size()
        state.stats["output_dist"] = state.remote(state.send_splits, row)
        return state.forward_op.recv

    @staticmethod
    def backward(ctx: Any, _placeholder: Tensor) -> tuple[Tensor, None, None]:
        # The reverse all-to-all was issued by _Wait.backward: pass its buffer on
        # unread; the arrival's reader waits for it.
        op = ctx.state.backward_op
        ctx.state.arrival.expect(op)
        return op.recv, None, None


class _Wait(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, recv: Tensor, state: PooledAllToAll) -> Tensor:
        ctx.state = state
        state.forward_op.wait()
        return recv.view_as(recv)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        state = ctx.state
        grad = grad.contiguous()
        if state.grad_scale != 1.0:
            grad = grad * state.grad_scale
        # Gradients go back the way the rows came: swap the splits.
        state.backward_op = AllToAll(
            grad, state.recv_splits, state.send_splits, state.group, state.world_size
        )
        row = grad[0].numel() * grad.element_size() if grad.dim() > 1 else grad.element_size()
        state.stats["output_dist_backward"] = state.remote(state.recv_splits, row)
        return grad, None


def pooled_all_to_all_start(send: Tensor, anchor: Tensor, state: PooledAllToAll) -> Tensor:
    """Starts sending rows of ``send``; pass the result to :func:`pooled_all_to_all_wait`.

    ``anchor`` is a leaf that requires grad: it puts the exchange in the autograd graph
    even on a rank that sends nothing, so that every rank joins the backward exchange.
    """
    return _Start.apply(send, anchor, state)


def pooled_all_to_all_wait(recv: Tensor, state: PooledAllToAll) -> Tensor:
    """Waits for the rows; in backward, sends their gradients (x grad_scale) back."""
    return _Wait.apply(recv, state)


def all_gather_padded(t: Tensor, sizes: list[int], group: dist.ProcessGroup | None) -> list[Tensor]:
    """All-gather of 1-D tensors whose lengths (``sizes[r]``, known on every rank) differ."""
    longest = max(sizes) if sizes else 0
    padded = t.new_zeros(longest)
    padded[: t.numel()] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return [p[:n] for p, n in zip(parts, sizes, strict=True)]
