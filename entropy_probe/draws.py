"""Deterministic random draws of (x_0, ε), independent of batch size and device.

Every draw is addressed by (stream, node, sample index). Items are generated in fixed chunks
of `CHUNK` samples, each from its own generator seeded by (seed, stream, node, chunk), so an
estimate gives the same numbers for any batch size, and two estimates that share a seed use
the same draws (common random numbers across checkpoints and processes). Draws are made on
the CPU in float64 and moved to the evaluation device afterwards.

For a finite data source, node k visits the items in a random permutation of its own (a new
permutation for every further pass over the data); for a distribution source, items are fresh
draws.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .data import DataSource

#: Samples per generator chunk. Changing it changes every estimate, so it is fixed.
CHUNK = 64

#: Streams: the rate nodes, the draws at T (prior and KL terms), per-sample times.
STREAM_NODES = 0
STREAM_TERMINAL = 1
STREAM_TIMES = 2

_TAG_NOISE = 1
_TAG_DATA = 2
_TAG_PERM = 3
_TAG_TIME = 4


def derived_seed(*words: int) -> int:
    """A 63-bit seed derived from integers by NumPy's SeedSequence (well mixed, reproducible)."""
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 ^ int(state[1])) & ((1 << 63) - 1)


def _generator(*words: int) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(*words))


class Draws:
    """x_0, labels and ε for (stream, node, sample index) ranges."""

    def __init__(self, source: DataSource, seed: int) -> None:
        self.source = source
        self.seed = int(seed)
        self._perm_cache: dict[tuple[int, int, int], np.ndarray] = {}
        self._chunk_cache: dict[tuple[int, int, int, int], tuple] = {}

    # --- chunk generators ----------------------------------------------------------------
    def _noise_chunk(self, stream: int, node: int, chunk: int) -> torch.Tensor:
        key = (_TAG_NOISE, stream, node, chunk)
        cached = self._chunk_cache.get(key)
        if cached is None:
            gen = _generator(self.seed, _TAG_NOISE, stream, node, chunk)
            cached = (torch.randn((CHUNK,) + tuple(self.source.shape), generator=gen, dtype=torch.float64),)
            self._remember(key, cached)
        return cached[0]

    def _data_chunk(self, stream: int, node: int, chunk: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        key = (_TAG_DATA, stream, node, chunk)
        cached = self._chunk_cache.get(key)
        if cached is None:
            gen = _generator(self.seed, _TAG_DATA, stream, node, chunk)
            x, labels = self.source.sample(CHUNK, gen)
            cached = (x.to(torch.float64), labels)
            self._remember(key, cached)
        return cached

    def _remember(self, key, value) -> None:
        # A batch touches at most a few chunks of each kind; keep the most recent ones.
        if len(self._chunk_cache) > 16:
            self._chunk_cache.pop(next(iter(self._chunk_cache)))
        self._chunk_cache[key] = value

    def _permutation(self, stream: int, node: int, cycle: int) -> np.ndarray:
        key = (stream, node, cycle)
        perm = self._perm_cache.get(key)
        if perm is None:
            rng = np.random.default_rng(derived_seed(self.seed, _TAG_PERM, stream, node, cycle))
            perm = rng.permutation(len(self.source))
            if len(self._perm_cache) > 4:
                self._perm_cache.pop(next(iter(self._perm_cache)))
            self._perm_cache[key] = perm
        return perm

    # --- public ranges ---------------------------------------------------------------------
    def _gather(self, start: int, stop: int, chunk_fn) -> list:
        parts = []
        position = start
        while position < stop:
            chunk, offset = divmod(position, CHUNK)
            take = min(CHUNK - offset, stop - position)
            parts.append((chunk_fn(chunk), offset, take))
            position += take
        return parts

    def noise(self, stream: int, node: int, start: int, stop: int) -> torch.Tensor:
        parts = self._gather(start, stop, lambda c: self._noise_chunk(stream, node, c))
        return torch.cat([chunk[o : o + n] for chunk, o, n in parts])

    def data(self, stream: int, node: int, start: int, stop: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.source.finite:
            cycles, positions = np.divmod(np.arange(start, stop), len(self.source))
            indices = np.empty(stop - start, dtype=np.int64)
            for cycle in np.unique(cycles):
                mask = cycles == cycle
                indices[mask] = self._permutation(stream, node, int(cycle))[positions[mask]]
            return self.source.get(indices)
        parts = self._gather(start, stop, lambda c: self._data_chunk(stream, node, c))
        x = torch.cat([chunk[0][o : o + n] for chunk, o, n in parts])
        labels = None
        if parts[0][0][1] is not None:
            labels = torch.cat([chunk[1][o : o + n] for chunk, o, n in parts])
        return x, labels

    def uniforms(self, stream: int, node: int, start: int, stop: int) -> np.ndarray:
        """Uniform(0, 1) numbers, for per-sample times of importance-sampled estimates."""
        parts = self._gather(
            start,
            stop,
            lambda c: torch.rand(CHUNK, generator=_generator(self.seed, _TAG_TIME, stream, node, c), dtype=torch.float64),
        )
        return torch.cat([chunk[o : o + n] for chunk, o, n in parts]).numpy()
