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
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distbuild.scheduling_plan import Work

SHARDS = 64
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


def shard_of(key: str) -> int:
    """The shard that holds `key` (hash-based: valid within one process)."""
    return ROUTES[hash(key) & (_BUCKETS - 1)]


def partition(work: dict[str, Work]) -> dict[int, dict[str, Work]]:
    """`work` split by shard, ready for `WorkIndex.merge`."""
    parts: dict[int, dict[str, Work]] = {}
    routes, mask = ROUTES, _BUCKETS - 1
    for key, w in work.items():
        s = routes[hash(key) & mask]
        part = parts.get(s)
        if part is None:
            part = parts[s] = {}
        part[key] = w
    return parts


class WorkIndex(Mapping[str, "Work"]):
    """key -> Work for every key a live request (or one still being tidied) holds."""

    def __init__(self, ended: set[str]):
        self._shards: list[dict[str, Work]] = [{} for _ in range(SHARDS)]
        self._route = [self._shards[s] for s in ROUTES]  # bucket -> its shard's dict
        self._ended = ended  # request ids ended but maybe still listed by their work

    def clean(self, work: Work) -> Work:
        """`work`, with the ended requests it still listed dropped from its `requests`."""
        if self._ended and not self._ended.isdisjoint(work.requests):
            for rid in self._ended.intersection(work.requests):
                del work.requests[rid]
        return work

    def __getitem__(self, key: str) -> Work:
        return self.clean(self._route[hash(key) & (_BUCKETS - 1)][key])

    def get(self, key: str, default: Work | None = None) -> Work | None:  # type: ignore[override]
        work = self._route[hash(key) & (_BUCKETS - 1)].get(key)
        return default if work is None else self.clean(work)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._route[hash(key) & (_BUCKETS - 1)]

    def __iter__(self) -> Iterator[str]:
        for shard in self._shards:
            yield from list(shard)

    def __len__(self) -> int:
        return sum(map(len, self._shards))

    def values(self) -> Iterator[Work]:  # type: ignore[override]
        for shard in self._shards:
            for work in list(shard.values()):
                yield self.clean(work)

    def held(self, parts: dict[int, dict[str, Work]]) -> dict[str, Work]:
        """The work already held for the keys of `parts` (a `partition`): key -> Work."""
        held: dict[str, Work] = {}
        for s, part in parts.items():
            shard = self._shards[s]
            if not shard.keys().isdisjoint(part):  # most are: no set made for those
                for key in part.keys() & shard.keys():
                    held[key] = self.clean(shard[key])
        return held

    def merge(self, parts: dict[int, dict[str, Work]], held: dict[str, Work]) -> None:
        """Hold the work of `parts`, except that the keys of `held` keep their work."""
        for s, part in parts.items():
            self._shards[s].update(part)
        for key, work in held.items():
            self._route[hash(key) & (_BUCKETS - 1)][key] = work

    def drop(self, key: str) -> None:
        """Forget `key` (no request holds it any more)."""
        del self._route[hash(key) & (_BUCKETS - 1)][key]
