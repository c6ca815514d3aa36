"""Exact references: data laws whose diffused score is known in closed form.

Each oracle is both a data distribution (it draws x_0 and knows its moments) and a `Denoiser`
with the exact VE score, so `S_NN(oracle) = S_tot` tests the whole probe. Scores and log
densities are evaluated in float64 and in batches; mixtures use a streaming logsumexp over
components, so memory stays bounded for many components (the empirical oracle of a large
training set) and the responsibilities stay finite at small σ̃.

- `GaussianOracle`: N(μ, diag(s²)); p_t = N(α μ, α² s² + σ²) per dimension.
- `GaussianMixtureOracle`: Σ_k w_k N(μ_k, diag(s_k²)).
- `EmpiricalOracle`: the empirical law of N points (a mixture of N deltas), the perfect
  memoriser of a training set.
"""

from __future__ import annotations

import hashlib
import math
from typing import Optional

import numpy as np
import torch

from .denoiser import Denoiser
from .errors import SpecError

_LOG_2PI = math.log(2.0 * math.pi)


def _float64(array, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(array, dtype=np.float64))
    if not torch.isfinite(tensor).all():
        raise SpecError(f"oracle parameter {name} contains non-finite values")
    return tensor


class Oracle(Denoiser):
    """Common parts of the oracles: flattening, fingerprint and moments."""

    kind = ""
    #: Tensor attributes that `to` moves to the evaluation device.
    _device_attributes: tuple[str, ...] = ()

    def __init__(self, data_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.data_shape = tuple(int(n) for n in data_shape)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Parameters as named float64 tensors, as stored in model.safetensors."""
        raise NotImplementedError

    def to(self, device):
        """Move the parameters to `device` once, so evaluations need no transfers."""
        super().to(device)
        for name in self._device_attributes:
            setattr(self, name, getattr(self, name).to(self.device))
        return self

    def _compute_fingerprint(self) -> str:
        digest = hashlib.sha256(self.kind.encode())
        for name, tensor in sorted(self.tensors().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)

    def log_prob(self, x: torch.Tensor, sigma_tilde: torch.Tensor) -> torch.Tensor:
        """Log density of x̃ under p̃_σ̃ (nats, shape (B,))."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draw n data points x_0 (float64, on the CPU)."""
        raise NotImplementedError

    def mean(self) -> np.ndarray:
        raise NotImplementedError

    def covariance_eigenvalues(self) -> np.ndarray:
        raise NotImplementedError

    def second_moment(self) -> float:
        """E|x_0|², summed over dimensions."""
        return float(np.sum(self.mean() ** 2) + np.sum(self.covariance_eigenvalues()))


class GaussianOracle(Oracle):
    """Gaussian data N(μ, diag(s²))."""

    kind = "gaussian"
    _device_attributes = ("mu", "std")

    def __init__(self, mean, std, data_shape: Optional[tuple[int, ...]] = None) -> None:
        mean_t = _float64(mean, "mean").reshape(-1)
        std_t = _float64(std, "std").reshape(-1)
        if std_t.numel() == 1 and mean_t.numel() > 1:
            std_t = std_t.expand_as(mean_t).clone()
        if mean_t.shape != std_t.shape:
            raise SpecError(f"Gaussian oracle: mean has {mean_t.numel()} entries but std has {std_t.numel()}")
        if (std_t <= 0).any():
            bad = float(std_t[std_t <= 0][0])
            raise SpecError(f"invalid std {bad:g} of a Gaussian oracle; every std must be > 0 (for example --std 1)")
        super().__init__(data_shape or (mean_t.numel(),))
        if math.prod(self.data_shape) != mean_t.numel():
            raise SpecError(f"Gaussian oracle: data shape {self.data_shape} does not match {mean_t.numel()} means")
        self.mu = mean_t
        self.std = std_t
        self.fingerprint = self._compute_fingerprint()

    def tensors(self):
        return {"mean": self.mu, "std": self.std}

    def _variance(self, sigma_tilde: torch.Tensor) -> torch.Tensor:
        return self.std.to(sigma_tilde.device) ** 2 + sigma_tilde[:, None] ** 2

    def ve_score(self, x_tilde, sigma_tilde, labels=None):
        self.evaluations += x_tilde.shape[0]
        x = self._flat(x_tilde)
        score = (self.mu.to(x.device) - x) / self._variance(sigma_tilde)
        return score.reshape(x_tilde.shape)

    def log_prob(self, x, sigma_tilde):
        flat = self._flat(x)
        var = self._variance(sigma_tilde)
        return -0.5 * (_LOG_2PI + torch.log(var) + (flat - self.mu.to(flat.device)) ** 2 / var).sum(dim=1)

    def sample(self, n, generator):
        z = torch.randn((n, self.mu.numel()), generator=generator, dtype=torch.float64)
        return (self.mu.cpu() + self.std.cpu() * z).reshape((n,) + self.data_shape)

    def mean(self):
        return self.mu.cpu().numpy().copy()

    def covariance_eigenvalues(self):
        return (self.std.cpu().numpy() ** 2).copy()


class GaussianMixtureOracle(Oracle):
    """Mixture Σ_k w_k N(μ_k, diag(s_k²)); component stds of zero give point masses."""

    kind = "gmm"
    _device_attributes = ("weights", "means", "stds")
    #: Components processed at once in the streaming logsumexp.
    component_chunk = 4096

    def __init__(self, weights, means, stds, data_shape: Optional[tuple[int, ...]] = None) -> None:
        means_t = _float64(means, "means")
        if means_t.dim() != 2:
            raise SpecError(f"mixture oracle: means must have shape (components, d), not {tuple(means_t.shape)}")
        k, d = means_t.shape
        weights_t = _float64(weights, "weights").reshape(-1)
        stds_t = _float64(stds, "stds")
        if stds_t.dim() < 2:
            stds_t = stds_t.reshape(-1, 1).expand(k, d).clone() if stds_t.numel() in (1, k) else stds_t
        if weights_t.numel() != k or stds_t.shape != (k, d):
            raise SpecError(
                f"mixture oracle: {k} means of dimension {d} need {k} weights and stds of shape "
                f"({k}, {d}); got {weights_t.numel()} weights and stds of shape {tuple(stds_t.shape)}"
            )
        if (weights_t <= 0).any():
            raise SpecError("mixture oracle: every weight must be positive")
        if (stds_t < 0).any():
            raise SpecError("mixture oracle: stds must be >= 0")
        super().__init__(data_shape or (d,))
        if math.prod(self.data_shape) != d:
            raise SpecError(f"mixture oracle: data shape {self.data_shape} does not match dimension {d}")
        self.weights = weights_t / weights_t.sum()
        self.means = means_t
        self.stds = stds_t
        self.fingerprint = self._compute_fingerprint()

    def tensors(self):
        return {"weights": self.weights, "means": self.means, "stds": self.stds}

    def _stream(self, x: torch.Tensor, sigma_tilde: torch.Tensor, want_score: bool):
        """Stream over component chunks; return (log p̃, score or None)."""
        device = x.device
        batch, dim = x.shape
        s2 = sigma_tilde[:, None] ** 2
        running_max = torch.full((batch,), -math.inf, dtype=torch.float64, device=device)
        total = torch.zeros(batch, dtype=torch.float64, device=device)
        mean_acc = torch.zeros((batch, dim), dtype=torch.float64, device=device) if want_score else None
        prec_acc = torch.zeros((batch, dim), dtype=torch.float64, device=device) if want_score else None
        x2 = x * x
        for start in range(0, self.means.shape[0], self.component_chunk):
            stop = start + self.component_chunk
            mu = self.means[start:stop].to(device)
            var0 = self.stds[start:stop].to(device) ** 2
            log_w = torch.log(self.weights[start:stop].to(device))
            # Isotropic components (all point masses among them) reduce to matrix products;
            # diagonal ones need a (B, K, d) array, so they are chunked the same way.
            isotropic = bool((var0 == var0[:, :1]).all())
            if isotropic:
                var = var0[:, 0][None, :] + s2  # (B, K)
                sq = x2.sum(1, keepdim=True) - 2.0 * x @ mu.T + (mu * mu).sum(1)[None, :]
                sq = sq.clamp_min(0.0)
                log_comp = -0.5 * (dim * (_LOG_2PI + torch.log(var)) + sq / var)
            else:
                var_full = var0[None, :, :] + s2[:, :, None]  # (B, K, d)
                diff = x[:, None, :] - mu[None, :, :]
                log_comp = -0.5 * (_LOG_2PI + torch.log(var_full) + diff * diff / var_full).sum(-1)
            log_joint = log_comp + log_w[None, :]
            chunk_max = log_joint.max(dim=1).values
            new_max = torch.maximum(running_max, chunk_max)
            rescale = torch.exp(running_max - new_max)
            weights = torch.exp(log_joint - new_max[:, None])  # (B, K)
            total = total * rescale + weights.sum(1)
            if want_score:
                if isotropic:
                    inv = weights / var  # (B, K)
                    mean_acc = mean_acc * rescale[:, None] + inv @ mu
                    prec_acc = prec_acc * rescale[:, None] + inv.sum(1, keepdim=True)
                else:
                    inv_full = weights[:, :, None] / var_full
                    mean_acc = mean_acc * rescale[:, None] + (inv_full * mu[None]).sum(1)
                    prec_acc = prec_acc * rescale[:, None] + inv_full.sum(1)
            running_max = new_max
        log_p = running_max + torch.log(total)
        if not want_score:
            return log_p, None
        # Σ_k r_k (μ_k − x)/v_k with r_k = w_k N_k / Σ_j w_j N_j.
        score = (mean_acc - x * prec_acc) / total[:, None]
        return log_p, score

    def ve_score(self, x_tilde, sigma_tilde, labels=None):
        self.evaluations += x_tilde.shape[0]
        _, score = self._stream(self._flat(x_tilde), sigma_tilde, want_score=True)
        return score.reshape(x_tilde.shape)

    def log_prob(self, x, sigma_tilde):
        if (self.stds == 0).any() and (sigma_tilde == 0).any():
            raise ValueError("log density of point masses is undefined at σ̃ = 0")
        log_p, _ = self._stream(self._flat(x), sigma_tilde, want_score=False)
        return log_p

    def sample(self, n, generator):
        component = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator)
        z = torch.randn((n, self.means.shape[1]), generator=generator, dtype=torch.float64)
        return (self.means.cpu()[component] + self.stds.cpu()[component] * z).reshape((n,) + self.data_shape)

    def mean(self):
        return (self.weights @ self.means).cpu().numpy()

    def covariance(self) -> np.ndarray:
        w = self.weights.cpu().numpy()
        mu = self.means.cpu().numpy()
        m = w @ mu
        second = (mu.T * w) @ mu + np.diag(w @ (self.stds.cpu().numpy() ** 2))
        return second - np.outer(m, m)

    def covariance_eigenvalues(self):
        return np.clip(np.linalg.eigvalsh(self.covariance()), 0.0, None)


class EmpiricalOracle(GaussianMixtureOracle):
    """The empirical law (1/N) Σ_i δ(x − x_i) of N training points: the perfect memoriser.

    Its score at x̃ is (Σ_i r_i x_i − x̃)/σ̃² with softmax responsibilities r_i, and its S_tot
    (which grows like (d/2) log(1/σ(t_min)²) as t_min → 0) is the memorisation ceiling.
    """

    kind = "empirical"

    def __init__(self, points, data_shape: Optional[tuple[int, ...]] = None) -> None:
        pts = _float64(points, "points")
        n = pts.shape[0]
        if n < 1:
            raise SpecError("empirical oracle needs at least one point")
        flat = pts.reshape(n, -1)
        shape = data_shape or tuple(pts.shape[1:])
        super().__init__(torch.ones(n, dtype=torch.float64), flat, torch.zeros_like(flat), shape)

    def tensors(self):
        return {"points": self.means}

    @property
    def points(self) -> torch.Tensor:
        return self.means.reshape((-1,) + self.data_shape)

    def sample(self, n, generator):
        index = torch.randint(0, self.means.shape[0], (n,), generator=generator)
        return self.means.cpu()[index].reshape((n,) + self.data_shape).clone()

    def covariance(self):
        return np.atleast_2d(np.cov(self.means.cpu().numpy(), rowvar=False, bias=True))


def paper_mixture(
    dim: int,
    components: int = 5,
    side: float = 4.0,
    std_min: float = 0.5,
    std_max: float = 1.0,
    seed: int = 0,
) -> GaussianMixtureOracle:
    """Random Gaussian mixture by the Neural Entropy paper's recipe.

    Means uniform in the cube [−side/2, side/2]^d, isotropic component stds uniform in
    [std_min, std_max], mixing weights uniform in [0, 1] then normalised. The draw uses NumPy's
    PCG64 generator seeded with `seed`, so a (recipe, seed) pair always gives the same mixture.
    """
    if dim < 1 or components < 1:
        raise SpecError(
            f"invalid mixture recipe dim={dim}, components={components}; both must be >= 1 "
            f"(for example --dim 3 --components 5)"
        )
    if not (side > 0 and 0 < std_min <= std_max):
        raise SpecError(
            f"mixture recipe needs side > 0 and 0 < std_min <= std_max "
            f"(got side={side}, std_min={std_min}, std_max={std_max})"
        )
    rng = np.random.default_rng(seed)
    means = rng.uniform(-side / 2, side / 2, size=(components, dim))
    stds = rng.uniform(std_min, std_max, size=components)
    weights = rng.uniform(0.0, 1.0, size=components)
    weights = weights / weights.sum()
    oracle = GaussianMixtureOracle(weights, means, np.repeat(stds[:, None], dim, axis=1))
    oracle.provenance["recipe"] = {
        "dim": dim,
        "components": components,
        "side": side,
        "std_min": std_min,
        "std_max": std_max,
        "seed": seed,
    }
    return oracle
