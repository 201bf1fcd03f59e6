"""Central finite differences: the yardstick for every analytic gradient."""

from __future__ import annotations

import numpy as np


def fd_grad(f, params: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Gradient of scalar ``f`` at ``params`` by central differences with step ``h``."""
    grad = np.zeros_like(params)
    for i in range(params.size):
        e = np.zeros_like(params)
        e[i] = h
        grad[i] = (f(params + e) - f(params - e)) / (2 * h)
    return grad


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric relative error of two vectors."""
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-12))
