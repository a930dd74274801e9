"""A row-per-sequence KV cache whose live rows are kept contiguous.

Each layer has `k, v: [rows, kv_heads, capacity, head_dim]`, allocated once. A running sequence owns one row.
When a sequence leaves, the last live row moves into its place (only the filled part is copied), so the live rows are
always `0..n-1` and a decode step attends over one strided view `k[:n, :, :L]` with a length mask: no gather, no
per-step copies of the cache. Simpler than a paged cache; the cost is `capacity` tokens reserved per row.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        num_layers: int,
        rows: int,
        kv_heads: int,
        capacity: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        shape = (rows, kv_heads, capacity, head_dim)
        # zeros, not empty: a masked-out value still multiplies a zero weight, and 0 * NaN garbage would be NaN.
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.rows = rows
        self.capacity = capacity
        self.lengths = [0] * rows  # tokens written per live row
        self.owner: list[int | None] = [None] * rows
        self.live = 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))

    @property
    def free_rows(self) -> int:
        return self.rows - self.live

    def allocate(self, owner: int) -> int:
        if self.live >= self.rows:
            raise RuntimeError("no free KV cache row")  # the scheduler checks free_rows first
        row = self.live
        self.live += 1
        self.owner[row] = owner
        self.lengths[row] = 0
        return row

    def release(self, row: int) -> tuple[int, int] | None:
        """Free `row`; returns `(moved_owner, row)` when the last live row moved into it, so its owner can follow."""
        last = self.live - 1
        moved: tuple[int, int] | None = None
        if row != last:
            n = self.lengths[last]
            for k, v in zip(self.k, self.v, strict=True):
                k[row, :, :n].copy_(k[last, :, :n])
                v[row, :, :n].copy_(v[last, :, :n])
            owner = self.owner[last]
            assert owner is not None
            self.owner[row], self.lengths[row] = owner, n
            moved = (owner, row)
        self.owner[last], self.lengths[last] = None, 0
        self.live -= 1
        return moved
