"""The scheduler's index of the work it holds, by cache key: sharded, so no call regrows it all.

One dict of every key held would, as requests come, double its table now and
then inside one call, at a cost of the whole queue (milliseconds at 100,000
keys). The index is instead `SHARDS` dicts, and a key's shard is fixed by its
hash. The shards get unequal shares of the hash space, spread evenly over one
octave, so at any size they reach their next doubling at different times:
adding a request regrows about one shard, not all at once. `plan_request`
splits a plan's work by shard (`partition`), off the reactor thread, so the
scheduler merges it shard by shard with dict operations and no loop per key.

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
    """key -> Work for every key a live request (or one still being tidied) holds."""

    def __init__(self, ended: set[str]):
        self._shards: list[dict[str, Work]] = [{} for _ in range(SHARDS)]
        self._route = [self._shards[s] for s in ROUTES]  # bucket -> its shard's dict
        self._ended = ended  # request ids ended but maybe still listed by their work
        self.generation = 0  # merges so far
        # The last merges: (generation, the merged request's own key -> Work map).
        self._merges: deque[tuple[int, dict[str, Work]]] = deque(maxlen=MERGES_KEPT)

    def clean(self, work: Work) -> Work:
        """`work`, with the ended requests it still listed dropped from its `requests`."""
        if self._ended and not self._ended.isdisjoint(work.requests):
            for rid in self._ended.intersection(work.requests):
                del work.requests[rid]
        return work

    def __getitem__(self, key: str) -> Work:
        return self.clean(self._route[_bucket(key)][key])

    def get(self, key: str, default: Work | None = None) -> Work | None:  # type: ignore[override]
        work = self._route[_bucket(key)].get(key)
        return default if work is None else self.clean(work)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._route[_bucket(key)]

    def __iter__(self) -> Iterator[str]:
        for shard in self._shards:
            yield from list(shard)

    def __len__(self) -> int:
        return sum(map(len, self._shards))

    def values(self) -> Iterator[Work]:  # type: ignore[override]
        for shard in self._shards:
            for work in list(shard.values()):
                yield self.clean(work)

    def seen(self, parts: list[dict[str, Work]]) -> tuple[int, set[str]]:
        """(generation, keys of `parts` held then): a look made ahead, maybe on another thread.

        Safe beside the scheduler's thread: each shard is read in one C call (str keys
        run no Python code, so the GIL is held), and `held` checks the keys against
        what was merged or dropped since.
        """
        generation = self.generation
        # Shard by shard in C (map): the cost is a lookup per key, with no Python loop.
        return generation, set().union(*map(operator.and_, map(dict.keys, self._shards),
                                            map(dict.keys, parts)))

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
            work = self._route[_bucket(key)].get(key)
            if work is not None:  # (dropped since it was seen)
                held[key] = self.clean(work)
        return held

    def merge(self, parts: list[dict[str, Work]], held: dict[str, Work],
              own: dict[str, Work]) -> None:
        """Hold the work of `parts`, except that the keys of `held` keep their work.

        `own` is the request's key -> Work map (what `parts` split): it is kept for a
        while, for `held` to check looks made ahead against.
        """
        deque(map(dict.update, self._shards, parts), maxlen=0)
        for key, work in held.items():
            self._route[_bucket(key)][key] = work
        self.generation += 1
        self._merges.append((self.generation, own))

    def drop(self, key: str) -> None:
        """Forget `key` (no request holds it any more)."""
        del self._route[_bucket(key)][key]
