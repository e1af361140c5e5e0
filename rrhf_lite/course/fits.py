"""Curves fitted to reward against KL: the square-root law of Bai et al. (2022) and the scaling forms of Gao et al.
(2022), whose RL form rises, peaks and falls (over-optimisation). Plain numpy: points in, coefficients out.
"""

from __future__ import annotations

import numpy as np


def sqrt_kl_fit(kl, reward) -> dict:
    """Least-squares line ``reward = intercept + slope * sqrt(KL)`` (Bai et al. 2022), its R^2 and the number of
    points (NaN where fewer than 3 distinct KLs leave nothing to test)."""
    x, y = np.sqrt(np.clip(np.asarray(kl, dtype=float), 0, None)), np.asarray(reward, dtype=float)
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    if len(np.unique(x)) < 3:  # a line through fewer than 3 distinct points fits anything
        return {"slope": np.nan, "intercept": np.nan, "R2": np.nan, "points": len(x)}
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    return {"slope": float(slope), "intercept": float(intercept),
            "R2": float(1 - (residual ** 2).sum() / ((y - y.mean()) ** 2).sum()), "points": len(x)}


GAO_FORMS = {"rl": "g0 + d (alpha - beta ln d)", "bon": "g0 + d (alpha - beta d)"}


def _gao_features(d: np.ndarray, form: str) -> np.ndarray:
    """The fitted form's terms ``[1, d, -shape(d)]``: ``shape = d ln d`` for RL (0 at d = 0), ``d^2`` for best-of-n."""
    if form not in GAO_FORMS:
        raise ValueError(f"form must be one of {sorted(GAO_FORMS)}, got {form!r}")
    bend = d * np.log(np.where(d > 0, d, 1.0)) if form == "rl" else d ** 2
    return np.stack([np.ones_like(d), d, -bend], axis=-1)


def gold_curve(fit: dict, kl) -> np.ndarray:
    """The gold reward that a :func:`gold_fit` result predicts at ``kl``."""
    d = np.sqrt(np.clip(np.asarray(kl, dtype=float), 0, None))
    return _gao_features(d, fit["form"]) @ np.array([fit["g0"], fit["alpha"], fit["beta"]])


def fitted_curve(fit: dict, max_kl: float, points: int = 100) -> dict[str, np.ndarray]:
    """``curve_kl`` (``points`` KLs from 0 to ``max_kl``) and ``curve_gold`` (what ``fit`` predicts there), to plot."""
    grid = np.linspace(0, float(max_kl), points)
    return {"curve_kl": grid, "curve_gold": gold_curve(fit, grid)}


def gold_fit(kl, gold, form: str = "rl") -> dict:
    """Least-squares fit of Gao et al.'s (2022) scaling form for the gold reward, in ``d = sqrt(KL)``:

    * ``form="rl"`` (their form for RL): ``gold = g0 + d (alpha - beta ln d)``, which peaks where its slope
      ``alpha - beta (ln d + 1)`` is 0, at ``d* = exp(alpha / beta - 1)``;
    * ``form="bon"`` (their form for best-of-n): ``gold = g0 + d (alpha - beta d)``, peak at ``d* = alpha / (2 beta)``.

    Gao et al. fit the reward *gained* from the initial policy; ``g0`` is the gold reward at KL 0. Returns the
    coefficients, the form and the peak (``peak_kl = d*^2``, and the fitted gold there); a curve with ``beta <= 0``
    never turns down: its peak is reported at the largest KL fitted, a curve that never rises at KL 0.
    """
    kl = np.clip(np.asarray(kl, dtype=float), 0, None)
    d = np.sqrt(kl)
    (g0, alpha, beta), *_ = np.linalg.lstsq(_gao_features(d, form), np.asarray(gold, dtype=float), rcond=None)
    fit = {"form": form, "g0": g0, "alpha": alpha, "beta": beta}
    if beta <= 0:  # no downturn: the curve rises (or falls) all the way
        peak_d = float(d.max()) if alpha > 0 else 0.0
    elif form == "rl":
        peak_d = float(np.exp(alpha / beta - 1))
    else:
        peak_d = max(alpha / (2 * beta), 0.0)
    fit.update(peak_kl=peak_d ** 2, gold_at_peak=float(gold_curve(fit, peak_d ** 2)))
    return fit
