"""The scheduler's index of the work it holds, by cache key: sharded, so no call regrows it all.

One dict of every key held would, as requests come, double its table now and
then inside one call, at a cost of the whole queue (milliseconds at 100,000
keys). The index is instead `SHARDS` dicts, and a key's shard is fixed by its
hash. The shards get unequal shares of the hash space, spread evenly over one
octave, so at any size they reach their next doubling at different times.
`plan_request` splits a plan's work by shard (`partition`), off the reactor
thread; adding the request only queues that split (its new keys) as a batch,
and later calls move batches into the shards a few hundred keys at a time
(`settle`), so no call pays for a request's whole size or a shard's regrowth
all at once. It can also look up, ahead and from another thread, which of a
plan's keys are held (`seen`).

Requests that ended may still be listed in their work's `requests` until the
scheduler's tidying reaches that work; reads through the index drop them, so
every caller sees only the requests that are live.
"""

from __future__ import annotations

import bisect
import operator
from collections import deque
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distbuild.scheduling_plan import Work

SHARDS = 64
MERGES_KEPT = 64  # a look ahead made before more merges than this is made again
_BUCKETS = 4096  # hash buckets, shared out between the shards


def _routes() -> tuple[int, ...]:
    """bucket -> shard: shard i gets a share growing as 2**(i / SHARDS), one octave in all."""
    weights = [2 ** (i / SHARDS) for i in range(SHARDS)]
    total, edges, running = sum(weights), [], 0.0
    for weight in weights:
        running += weight
        edges.append(running / total)
    return tuple(min(SHARDS - 1, bisect.bisect_right(edges, (b + 0.5) / _BUCKETS))
                 for b in range(_BUCKETS))


ROUTES = _routes()
# The bucket comes from high bits of the hash: a dict places keys by the low ones,
# and a shard whose keys all had alike low bits would crowd them into few slots.
_SHIFT = 40


def _bucket(key: str) -> int:
    return (hash(key) >> _SHIFT) & (_BUCKETS - 1)


def shard_of(key: str) -> int:
    """The shard that holds `key` (hash-based: valid within one process)."""
    return ROUTES[_bucket(key)]


def partition(work: dict[str, Work]) -> list[dict[str, Work]]:
    """`work` split by shard (one dict per shard, in shard order), for `WorkIndex.merge`."""
    parts: list[dict[str, Work]] = [{} for _ in range(SHARDS)]
    routes, mask = ROUTES, _BUCKETS - 1
    for key, w in work.items():
        parts[routes[(hash(key) >> _SHIFT) & mask]][key] = w
    return parts


class WorkIndex(Mapping[str, "Work"]):
    """key -> Work for every key a live request (or one still being tidied) holds.

    A request's new keys are not put in the shards when it is added: its split
    work waits, as a batch, and is moved into the shards a few hundred keys per
    later call (`settle`); lookups look in the batches waiting, oldest first,
    after the shards. A key is in one place only: a batch holds just the keys
    that were new when its request was added.
    """

    def __init__(self, ended: set[str]):
        self._shards: list[dict[str, Work]] = [{} for _ in range(SHARDS)]
        self._ended = ended  # request ids ended but maybe still listed by their work
        self._waiting: deque[list[dict[str, Work]]] = deque()  # batches, oldest first
        self._next_part = 0  # of the oldest batch, the next shard's part to move
        self.waiting_keys = 0
        self.generation = 0  # merges so far
        # The last merges: (generation, the merged request's own key -> Work map).
        self._merges: deque[tuple[int, dict[str, Work]]] = deque(maxlen=MERGES_KEPT)

    def clean(self, work: Work) -> Work:
        """`work`, with the ended requests it still listed dropped from its `requests`."""
        if self._ended and not self._ended.isdisjoint(work.requests):
            for rid in self._ended.intersection(work.requests):
                del work.requests[rid]
        return work

    def _find(self, key: str) -> Work | None:
        s = ROUTES[_bucket(key)]
        work = self._shards[s].get(key)
        if work is None and self._waiting:
            for batch in self._waiting:
                work = batch[s].get(key)
                if work is not None:
                    break
        return work

    def __getitem__(self, key: str) -> Work:
        work = self._find(key)
        if work is None:
            raise KeyError(key)
        return self.clean(work)

    def get(self, key: str, default: Work | None = None) -> Work | None:  # type: ignore[override]
        work = self._find(key)
        return default if work is None else self.clean(work)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._find(key) is not None

    def _dicts(self) -> list[dict[str, Work]]:
        return self._shards + [part for batch in self._waiting for part in batch]

    def __iter__(self) -> Iterator[str]:
        for part in self._dicts():
            yield from list(part)

    def __len__(self) -> int:
        return sum(map(len, self._dicts()))

    def values(self) -> Iterator[Work]:  # type: ignore[override]
        for part in self._dicts():
            for work in list(part.values()):
                yield self.clean(work)

    def seen(self, parts: list[dict[str, Work]]) -> tuple[int, set[str]]:
        """(generation, keys of `parts` held then): a look made ahead, maybe on another thread.

        Safe beside the scheduler's thread: each dict is read in one C call (str keys
        run no Python code, so the GIL is held), and `held` checks the keys against
        what was merged or dropped since.
        """
        generation = self.generation
        keys: set[str] = set()
        # Dict by dict in C (map): the cost is a lookup per key, with no Python loop.
        # The batches before the shards: `settle` moves keys from the one to the other,
        # so each key is met (a batch the snapshot lists but that left is empty).
        for dicts in [*list(self._waiting), self._shards]:
            keys.update(*map(operator.and_, map(dict.keys, dicts), map(dict.keys, parts)))
        return generation, keys

    def held(self, parts: list[dict[str, Work]], own: dict[str, Work],
             seen: tuple[int, set[str]] | None = None) -> dict[str, Work]:
        """The work already held for the keys of `parts` (a `partition` of `own`): key -> Work.

        With `seen` (from `seen`, made earlier), only the keys found then and those of
        the requests merged since are looked at; without, every key is.
        """
        if seen is None or self.generation - seen[0] > len(self._merges):
            keys = self.seen(parts)[1]  # no look ahead, or merged past what is kept
        else:
            keys = set(seen[1])
            for generation, merged in reversed(self._merges):
                if generation <= seen[0]:
                    break
                keys |= own.keys() & merged.keys()
        held = {}
        for key in keys:
            work = self._find(key)
            if work is not None:  # (dropped since it was seen)
                held[key] = self.clean(work)
        return held

    def merge(self, parts: list[dict[str, Work]], held: dict[str, Work],
              own: dict[str, Work]) -> None:
        """Hold the work of `parts` (a `partition` of `own`); the keys of `held` keep theirs.

        `parts` waits to be moved into the shards (`settle`); `own`, the request's
        key -> Work map, is kept for a while, for `held` to check looks made ahead against.
        """
        for key in held:
            del parts[ROUTES[_bucket(key)]][key]  # held already: stays where it is
        self._waiting.append(parts)
        self.waiting_keys += len(own) - len(held)
        self.generation += 1
        self._merges.append((self.generation, own))

    def settle(self, limit: int) -> None:
        """Move about `limit` keys of the batches waiting into the shards."""
        waiting, shards = self._waiting, self._shards
        while waiting and limit > 0:
            batch = waiting[0]
            s = self._next_part
            part = batch[s]
            if part:
                shards[s].update(part)
                limit -= len(part)
                self.waiting_keys -= len(part)
                part.clear()
            if s + 1 == SHARDS:
                waiting.popleft()
                self._next_part = 0
            else:
                self._next_part = s + 1

    def drop(self, key: str) -> None:
        """Forget `key` (no request holds it any more)."""
        s = ROUTES[_bucket(key)]
        if self._shards[s].pop(key, None) is None:
            for batch in self._waiting:
                if batch[s].pop(key, None) is not None:
                    self.waiting_keys -= 1
                    break
