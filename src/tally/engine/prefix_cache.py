"""Prefix caching: keys and values of prompt prefixes seen before, copied into a new sequence's row instead of
computed again (chat templates and system prompts open every request; a RAG context is often asked about twice).

A finished prompt's keys and values are kept for its longest prefix of whole blocks (`BLOCK` tokens) that leaves at
least one token to compute (the step needs the last token's logits). Every block boundary of that prefix is
indexed, so a later prompt that shares only the first blocks (the system prompt) still finds them. Keys and values
depend on the adapter (LoRA changes k_proj and v_proj), so the adapter's content hash is part of every key; a prefix
computed under one adapter is never reused under another. A request's `cache_salt` is part of the key too: a cached
prefix answers faster, so sharing one between callers would let a caller time whether someone else sent a prompt
(a private RAG context, say); the answer path salts with the requester. Entries are evicted least recently used
first, within `capacity_bytes`. The copy into a row is exact: the sequence then decodes exactly as if it had
computed the prefix. An entry may also hold the prefix's hidden states at the engine's states layer (kept when a
request that computed the prefix asked for them); a request that asks for states is served only by an entry that has
them.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import torch

from tally.engine.kv_cache import KVCache

BLOCK = 16


@dataclass
class _Entry:
    keys: list[torch.Tensor]  # per layer [kv_heads, tokens, head_dim]
    values: list[torch.Tensor]
    boundaries: list[bytes]  # the index keys that point here
    nbytes: int
    states: torch.Tensor | None = None  # [tokens, hidden] entering the engine's states layer, when kept


class PrefixCache:
    def __init__(self, cache: KVCache, capacity_bytes: int) -> None:
        self.cache = cache
        self.capacity_bytes = capacity_bytes
        self.nbytes = 0
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # LRU: oldest first
        self._index: dict[bytes, tuple[int, int]] = {}  # boundary key -> (entry id, tokens)
        self._next_id = 0

    @property
    def enabled(self) -> bool:
        return self.capacity_bytes > 0

    @staticmethod
    def _boundaries(adapter_id: str | None, salt: str | None, tokens: list[int], limit: int) -> list[tuple[int, bytes]]:
        """(length, key) for every whole-block prefix of `tokens` up to `limit` tokens, shortest first."""
        digest = hashlib.blake2b(f"{adapter_id or ''}\x00{salt or ''}".encode(), digest_size=16)
        out = []
        for end in range(BLOCK, limit + 1, BLOCK):
            digest.update(b"".join(t.to_bytes(4, "little") for t in tokens[end - BLOCK : end]))
            out.append((end, digest.copy().digest()))
        return out

    @staticmethod
    def _reusable(prompt_len: int) -> int:
        """Tokens of a prompt that may come from the cache: whole blocks, leaving at least one to compute."""
        return (prompt_len - 1) // BLOCK * BLOCK

    def restore(
        self,
        adapter_id: str | None,
        salt: str | None,
        prompt: list[int],
        row: int,
        states: list[torch.Tensor] | None = None,
    ) -> int:
        """Copy the longest cached prefix of `prompt` into `row`; returns its length in tokens (0: none). With
        `states` (a list), only an entry holding hidden states serves, and the prefix's states are appended to it."""
        if not self.enabled:
            return 0
        best: tuple[int, int] | None = None
        for _, key in self._boundaries(adapter_id, salt, prompt, self._reusable(len(prompt))):
            found = self._index.get(key)
            # no early stop: an evicted entry may have taken a shorter boundary with it
            if found is not None and (states is None or self._entries[found[0]].states is not None):
                best = found
        if best is None:
            return 0
        entry_id, length = best
        entry = self._entries[entry_id]
        self._entries.move_to_end(entry_id)
        for layer, (k, v) in enumerate(zip(entry.keys, entry.values, strict=True)):
            self.cache.k[layer][row, :, :length].copy_(k[:, :length])
            self.cache.v[layer][row, :, :length].copy_(v[:, :length])
        self.cache.lengths[row] = length
        if states is not None and entry.states is not None:
            states.append(entry.states[:length].clone())
        return length

    def store(
        self,
        adapter_id: str | None,
        salt: str | None,
        prompt: list[int],
        row: int,
        states: torch.Tensor | None = None,
    ) -> None:
        """Keep the keys and values of `prompt`'s reusable prefix, just computed in `row` (and with `states`, the
        prompt's hidden states `[tokens, hidden]`, those of the prefix)."""
        length = self._reusable(len(prompt))
        if not self.enabled or length == 0:
            return
        boundaries = self._boundaries(adapter_id, salt, prompt, length)
        usable = states is not None and states.shape[0] >= length
        known = self._index.get(boundaries[-1][1])
        if known is not None and known[1] == length:  # already cached whole: mark it used, add states it lacks
            self._entries.move_to_end(known[0])
            if usable and self._entries[known[0]].states is None:
                assert states is not None
                self._add_states(known[0], states[:length].clone())
            return
        kept = states[:length].clone() if usable and states is not None else None
        keys = [k[row, :, :length].clone() for k in self.cache.k]
        values = [v[row, :, :length].clone() for v in self.cache.v]
        nbytes = sum(t.numel() * t.element_size() for t in (*keys, *values, *([kept] if kept is not None else [])))
        if nbytes > self.capacity_bytes:
            return
        while self.nbytes + nbytes > self.capacity_bytes:
            self._evict_oldest()
        entry_id, self._next_id = self._next_id, self._next_id + 1
        entry = _Entry(keys, values, [], nbytes, kept)
        for end, key in boundaries:
            previous = self._index.get(key)
            if previous is None or previous[1] <= end:  # a boundary points at the entry holding it most recently
                self._index[key] = (entry_id, end)
                entry.boundaries.append(key)
        self._entries[entry_id] = entry
        self.nbytes += nbytes

    def _add_states(self, entry_id: int, states: torch.Tensor) -> None:
        """Give a cached entry the states it lacks, within capacity (older entries go first; never this one)."""
        entry = self._entries[entry_id]
        size = states.numel() * states.element_size()
        while self.nbytes + size > self.capacity_bytes and next(iter(self._entries)) != entry_id:
            self._evict_oldest()
        if self.nbytes + size <= self.capacity_bytes:
            entry.states, entry.nbytes = states, entry.nbytes + size
            self.nbytes += size

    def _evict_oldest(self) -> None:
        entry_id, entry = self._entries.popitem(last=False)
        self.nbytes -= entry.nbytes
        for key in entry.boundaries:
            if self._index.get(key, (None, 0))[0] == entry_id:
                del self._index[key]
