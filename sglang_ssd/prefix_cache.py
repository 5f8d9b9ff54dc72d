"""The draft's radix cache: committed token prefixes -> their KV slots in the draft pool.

A request that shares a prefix with an earlier one (a system prompt, a previous chat turn, a
resynced request) prefills only its new tokens in the draft process. KV at a slot depends only on
the tokens before it and its position, both fixed by the path from the root, so a matched prefix's
slots are used in place. A request's prompt joins the tree as soon as its KV is written (so
concurrent requests share a system prompt too) and its generated tokens when it ends. Slots on
the path of a live request are locked; the rest are evictable, least recently used leaves first,
when the pool needs room or more than `max_tokens` of them are held.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Optional, Sequence

from sglang_ssd.draft_batch import run, slot_tensor
from sglang_ssd.draft_model import SlotPool


class _Node:
    __slots__ = ("key", "slots", "children", "parent", "lock", "last")

    def __init__(self, key: list[int], slots: list[int], parent: Optional["_Node"]):
        self.key, self.slots, self.parent = key, slots, parent
        self.children: dict[int, _Node] = {}
        self.lock = 0
        self.last = 0


class PrefixCache:
    def __init__(self, pool: SlotPool, max_tokens: int):
        self.pool = pool
        self.max_tokens = max(0, int(max_tokens))
        self.root = _Node([], [], None)
        self.root.lock = 1  # never evicted
        self.tokens = 0  # slots held by the tree
        self.locked = 0  # of which on some live request's path
        self._clock = itertools.count(1)

    @property
    def evictable(self) -> int:
        return self.tokens - self.locked

    def match(self, tokens: Sequence[int]) -> tuple[_Node, list[int]]:
        """The deepest node whose path is a prefix of `tokens`, and that path's slots."""
        node, i, slots = self.root, 0, []
        now = next(self._clock)
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                break
            n = _common(child.key, tokens, i)
            if n < len(child.key):
                child = self._split(child, n)
            child.last = now
            slots += child.slots
            node, i = child, i + n
        return node, slots

    def lock(self, node: _Node) -> None:
        while node is not None:
            if node.lock == 0:
                self.locked += len(node.key)
            node.lock += 1
            node = node.parent

    def unlock(self, node: _Node) -> None:
        while node is not None:
            node.lock -= 1
            if node.lock == 0:
                self.locked -= len(node.key)
            node = node.parent

    def insert(self, tokens: Sequence[int], slots: Sequence[int], owned_from: int = 0) -> list[int]:
        """Add tokens -> slots, where slots[:owned_from] came from this cache (a locked match)
        and the rest belong to the caller. Returns the caller's slots the cache did not take
        (tokens it held already, or everything when disabled): the caller frees them. Call
        trim() once the caller locked what it still uses."""
        assert len(tokens) == len(slots) and 0 <= owned_from <= len(slots)
        if self.max_tokens == 0:
            return list(slots[owned_from:])
        node, i = self.root, 0
        now = next(self._clock)
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                leaf = _Node(list(tokens[i:]), list(slots[i:]), node)
                leaf.last = now
                node.children[tokens[i]] = leaf
                self.tokens += len(leaf.key)
                break
            n = _common(child.key, tokens, i)
            if n < len(child.key):
                child = self._split(child, n)
            child.last = now
            node, i = child, i + n
        return list(slots[owned_from:i])  # i >= owned_from: a locked match is never evicted

    def trim(self) -> None:
        """Evict down to max_tokens evictable slots."""
        self.evict(self.evictable - self.max_tokens)

    def evict(self, n: int) -> int:
        """Free at least n evictable slots if there are that many (LRU leaves first)."""
        if n <= 0:
            return 0
        heap = [(leaf.last, id(leaf), leaf) for leaf in self._leaves() if leaf.lock == 0]
        heapq.heapify(heap)
        freed = 0
        while heap and freed < n:
            _, _, leaf = heapq.heappop(heap)
            self.pool.free(leaf.slots)
            freed += len(leaf.slots)
            self.tokens -= len(leaf.key)
            parent = leaf.parent
            del parent.children[leaf.key[0]]
            if parent is not self.root and not parent.children and parent.lock == 0:
                heapq.heappush(heap, (parent.last, id(parent), parent))
        return freed

    def alloc(self, n: int) -> list[int]:
        """pool.alloc, evicting cached prefixes first when the pool is short."""
        short = n - (self.pool.size - self.pool.num_used)
        if short > 0:
            self.evict(short)
        return self.pool.alloc(n)

    def clear(self) -> None:
        self.evict(self.evictable)

    def _split(self, child: _Node, n: int) -> _Node:
        """Cut child's edge after n tokens; returns the new upper node."""
        parent = child.parent
        upper = _Node(child.key[:n], child.slots[:n], parent)
        upper.lock, upper.last = child.lock, child.last
        parent.children[upper.key[0]] = upper
        child.key, child.slots, child.parent = child.key[n:], child.slots[n:], upper
        upper.children[child.key[0]] = child
        return upper

    def _leaves(self):
        stack = [self.root]
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            elif node is not self.root:
                yield node


def _common(key: list[int], tokens: Sequence[int], start: int) -> int:
    n = 0
    while n < len(key) and start + n < len(tokens) and key[n] == tokens[start + n]:
        n += 1
    return n


def prefill_into_cache(model, cache: PrefixCache, prompt: Sequence[int]) -> int:
    """Compute the KV of a prompt's tokens the cache lacks and insert the whole prompt; returns
    how many tokens were computed. No slot without its KV ever joins the cache. The forward sees
    the cached part as one prefix tensor (the model cuts a long prompt into chunks)."""
    node, cached = cache.match(prompt)
    n0 = len(cached)
    if n0 >= len(prompt):
        return 0
    cache.lock(node)
    try:
        new = cache.alloc(len(prompt) - n0)
        try:
            model.forward([run(slot_tensor(cached), prompt[n0:], n0, new)], logits=False)
        except BaseException:
            model.pool.free(new)
            raise
        model.pool.free(cache.insert(prompt, list(cached) + new, n0))
    finally:
        cache.unlock(node)
    return len(new)
