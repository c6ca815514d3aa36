"""Deterministic random draws of (x_0, ε, t), independent of batch size, device and rank count.

Every draw is addressed by (stream, cell, sample index), where a cell is a quadrature node or a
stratum of an importance-sampled estimate. Items are generated in fixed chunks of `CHUNK`
samples, each from its own generator seeded by (seed, kind, stream, cell, chunk). An estimate
therefore gives the same numbers for any batch size, and for any split of the items over the
ranks of a distributed run. Draws are made on the CPU in float64 (NumPy's PCG64 for ε and the
uniforms behind the times, the data source's own sampler for x_0) and moved to the evaluation
device afterwards.

Common random numbers: two estimates with the same seed read the same (x_0, ε) at the same
(stream, cell, sample index), and the same uniforms behind the per-sample times. Whether that
means the same time t depends on the design: grid nodes and proposal quantiles are placed on
the process's own time axis, so under two different processes a cell is the same fraction of
the log σ̃ range (grid) or the same quantile of the proposal (importance sampling), not the
same t.

For a finite data source, cell k visits the items in a random permutation of its own (a new
permutation for every further pass over the data); for a distribution source, items are fresh
draws.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Optional

import numpy as np
import torch

from .data import DataSource

#: Samples per generator chunk. Changing it changes every estimate, so it is fixed.
CHUNK = 64

#: Streams: the cells of the estimate, the draws at t_min and T (entropy and KL terms), the
#: per-sample times of importance sampling, the pilot run that builds a proposal.
STREAM_NODES = 0
STREAM_TERMINAL = 1
STREAM_TIMES = 2
STREAM_PILOT = 3

_TAG_NOISE = 1
_TAG_DATA = 2
_TAG_PERM = 3
_TAG_TIME = 4

#: Chunks kept in memory per kind. A batch that ends inside a chunk leaves the rest to the next
#: batch, so only the most recent chunks are ever read again.
_CACHE_CHUNKS = 32


def derived_seed(*words: int) -> int:
    """Return a 63-bit seed derived from integers by NumPy's SeedSequence (well mixed, reproducible)."""
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 ^ int(state[1])) & ((1 << 63) - 1)


def _numpy_generator(*words: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(derived_seed(*words)))


def _torch_generator(*words: int) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(*words))


class _ChunkCache:
    """A small least-recently-used cache of generated chunks, safe to share between threads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, make: Callable):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
                return value
        value = make()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


class Draws:
    """x_0, labels, ε and uniforms for (stream, cell, sample index) ranges."""

    def __init__(self, source: DataSource, seed: int) -> None:
        self.source = source
        self.seed = int(seed)
        self._shape = tuple(source.shape)
        self._noise_cache = _ChunkCache(_CACHE_CHUNKS)
        self._data_cache = _ChunkCache(_CACHE_CHUNKS)
        self._perm_cache = _ChunkCache(8)

    # --- chunk generators ----------------------------------------------------------------
    def _noise_chunk(self, stream: int, cell: int, chunk: int) -> np.ndarray:
        def make():
            generator = _numpy_generator(self.seed, _TAG_NOISE, stream, cell, chunk)
            return generator.standard_normal((CHUNK,) + self._shape)

        return self._noise_cache.get((stream, cell, chunk), make)

    def _data_chunk(self, stream: int, cell: int, chunk: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        def make():
            generator = _torch_generator(self.seed, _TAG_DATA, stream, cell, chunk)
            x, labels = self.source.sample(CHUNK, generator)
            return x.to(torch.float64), labels

        return self._data_cache.get((stream, cell, chunk), make)

    def _uniform_chunk(self, stream: int, cell: int, chunk: int) -> np.ndarray:
        return _numpy_generator(self.seed, _TAG_TIME, stream, cell, chunk).random(CHUNK)

    def _permutation(self, stream: int, cell: int, cycle: int) -> np.ndarray:
        def make():
            rng = np.random.default_rng(derived_seed(self.seed, _TAG_PERM, stream, cell, cycle))
            return rng.permutation(len(self.source))

        return self._perm_cache.get((stream, cell, cycle), make)

    @staticmethod
    def _pieces(start: int, stop: int):
        """Yield (chunk, offset in chunk, count, offset in output) covering [start, stop)."""
        position = start
        while position < stop:
            chunk, offset = divmod(position, CHUNK)
            take = min(CHUNK - offset, stop - position)
            yield chunk, offset, take, position - start
            position += take

    # --- public ranges ---------------------------------------------------------------------
    def noise(self, stream: int, cell: int, start: int, stop: int, out: Optional[np.ndarray] = None) -> torch.Tensor:
        """ε for samples [start, stop) of a cell, float64 of shape (stop − start, *data shape)."""
        if out is None:
            out = np.empty((stop - start,) + self._shape)
        for chunk, offset, take, at in self._pieces(start, stop):
            out[at : at + take] = self._noise_chunk(stream, cell, chunk)[offset : offset + take]
        return torch.from_numpy(out)

    def data(self, stream: int, cell: int, start: int, stop: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x_0 (float64) and labels (int64 or None) for samples [start, stop) of a cell."""
        if self.source.finite:
            cycles, positions = np.divmod(np.arange(start, stop), len(self.source))
            indices = np.empty(stop - start, dtype=np.int64)
            for cycle in np.unique(cycles):
                mask = cycles == cycle
                indices[mask] = self._permutation(stream, cell, int(cycle))[positions[mask]]
            x, labels = self.source.get(indices)
            return x.to(torch.float64), labels
        parts = [(self._data_chunk(stream, cell, chunk), offset, take) for chunk, offset, take, _ in self._pieces(start, stop)]
        x = torch.cat([chunk[0][o : o + n] for chunk, o, n in parts])
        labels = None
        if parts[0][0][1] is not None:
            labels = torch.cat([chunk[1][o : o + n] for chunk, o, n in parts])
        return x, labels

    def uniforms(self, stream: int, cell: int, start: int, stop: int) -> np.ndarray:
        """Uniform(0, 1) numbers for samples [start, stop) of a cell (per-sample times)."""
        out = np.empty(stop - start)
        for chunk, offset, take, at in self._pieces(start, stop):
            out[at : at + take] = self._uniform_chunk(stream, cell, chunk)[offset : offset + take]
        return out
