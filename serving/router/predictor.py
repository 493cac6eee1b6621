"""The router's learned parts, trained from scorecard per-item results (numpy only).

- success: per model, P(correct | request features) by L2-regularised logistic
  regression on `serving.router.features` (one weight vector per model, fitted jointly);
- confidence: per model, P(correct | answer token log-probabilities) by a 3-feature
  logistic regression (min, mean and count of the answer's logprobs): the cascade's
  signal that this particular answer is probably wrong.

The file (`.npz`) holds the weights and a JSON header naming the models and the scorecard
it was trained on (its suite hash and creation time), so `Router.load` can tell when a
newer scorecard makes it stale.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel

from serving.router.features import DIM, feature_matrix, featurize

if TYPE_CHECKING:
    from serving.router.scorecard import Scorecard

PREDICTOR_VERSION = 1
CONFIDENCE_FEATURES = ("min_logprob", "mean_logprob", "log_tokens")
#: A few hundred training items cannot justify certainty: predictions stay inside these,
#: so a target of 1.0 always means "the best predicted model".
P_MIN, P_MAX = 0.001, 0.999


class PredictorMeta(BaseModel):
    version: int = PREDICTOR_VERSION
    models: list[str]
    scorecard: str  # "<suite_hash>@<created>" of the training scorecard
    trained_items: int
    l2: float
    #: Held-out (cross-validated) log loss and AUC of the success model, per model.
    cv: dict[str, dict[str, float]]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float, steps: int = 400, lr: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Columns of `y` (n, m) are fitted jointly: returns weights (m, d) and biases (m,).

    Full-batch Adam on mean log loss + l2/2 |w|^2; n is hundreds to thousands and only
    the columns that are non-zero somewhere are fitted (a few thousand of the hashed
    buckets), so a fit takes about a second on one core. `einsum` rather than `@`: these
    matmuls are small, and multi-threaded BLAS on a busy 2-core machine was measured 10x
    slower than einsum's single-threaded loop.
    """
    active = np.flatnonzero(np.any(x != 0, axis=0))
    xa = x[:, active].astype(np.float64)  # one dtype: mixed float32/64 matmuls skip BLAS
    n, m = y.shape
    w = np.zeros((m, xa.shape[1]), dtype=np.float64)
    b = np.log((y.mean(axis=0) + 1e-3) / (1 - y.mean(axis=0) + 1e-3))
    state = [np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)]
    beta1, beta2 = 0.9, 0.999
    for step in range(1, steps + 1):
        p = _sigmoid(np.einsum("nd,md->nm", xa, w) + b)
        err = (p - y) / n
        grad_w = np.einsum("nm,nd->md", err, xa) + l2 * w
        grad_b = err.sum(axis=0)
        for i, g in ((0, grad_w), (2, grad_b)):
            state[i] = beta1 * state[i] + (1 - beta1) * g
            state[i + 1] = beta2 * state[i + 1] + (1 - beta2) * g * g
            m_hat = state[i] / (1 - beta1**step)
            v_hat = state[i + 1] / (1 - beta2**step)
            if i == 0:
                w -= lr * m_hat / (np.sqrt(v_hat) + 1e-8)
            else:
                b -= lr * m_hat / (np.sqrt(v_hat) + 1e-8)
    full = np.zeros((m, x.shape[1]), dtype=np.float32)
    full[:, active] = w
    return full, b.astype(np.float32)


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic); 0.5 when one class is missing."""
    pos, neg = p[y == 1], p[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return 0.5
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def confidence_features(logprobs: list[float] | None) -> np.ndarray:
    if not logprobs:
        return np.array([-10.0, -10.0, 0.0], dtype=np.float32)
    lp = np.asarray(logprobs, dtype=np.float32)
    return np.array([lp.min(), lp.mean(), math.log1p(len(lp))], dtype=np.float32)


class Predictor:
    """P(correct) per model for a request, and per answer for the cascade."""

    def __init__(
        self,
        meta: PredictorMeta,
        weights: np.ndarray,
        bias: np.ndarray,
        conf_weights: np.ndarray,
        conf_bias: np.ndarray,
        calibration: np.ndarray | None = None,
    ) -> None:
        self.meta = meta
        self.models = list(meta.models)
        self.weights = weights.astype(np.float32)
        self.bias = bias.astype(np.float32)
        self.conf_weights = conf_weights.astype(np.float32)
        self.conf_bias = conf_bias.astype(np.float32)
        # Platt scaling per model (slope, intercept on the logit), fitted on out-of-fold
        # predictions: the regularised fit ranks items well (AUC ~0.99 on the demo) but
        # is under-confident, and the router compares probabilities with a target.
        if calibration is None:
            calibration = np.tile(np.array([1.0, 0.0], dtype=np.float32), (len(self.models), 1))
        self.calibration = calibration.astype(np.float32)
        self._index = {m: i for i, m in enumerate(self.models)}

    def _probs(self, logits: np.ndarray) -> np.ndarray:
        calibrated = logits * self.calibration[:, 0] + self.calibration[:, 1]
        return np.clip(_sigmoid(calibrated), P_MIN, P_MAX)

    def predict(self, messages: list[dict[str, str]]) -> dict[str, float]:
        indices, values = featurize(messages)
        probs = self._probs(self.weights[:, indices] @ values + self.bias)
        return {m: float(p) for m, p in zip(self.models, probs, strict=True)}

    def predict_many(self, requests: list[list[dict[str, str]]]) -> np.ndarray:
        """(n, models) success probabilities (training and benchmarks)."""
        return self._probs(feature_matrix(requests) @ self.weights.T + self.bias)

    def confidence(self, model: str, logprobs: list[float] | None) -> float | None:
        """P(this answer is correct | its token logprobs); None for an unknown model."""
        i = self._index.get(model)
        if i is None:
            return None
        z = float(confidence_features(logprobs) @ self.conf_weights[i] + self.conf_bias[i])
        return float(_sigmoid(np.asarray(z)))

    def save(self, path: Path | str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:  # np.savez would append .npz to a str path
            np.savez_compressed(
                fh,
                meta=np.asarray(self.meta.model_dump_json()),
                weights=self.weights.astype(np.float16),
                bias=self.bias,
                conf_weights=self.conf_weights,
                conf_bias=self.conf_bias,
                calibration=self.calibration,
            )

    @classmethod
    def load(cls, path: Path | str) -> Predictor:
        with np.load(Path(path), allow_pickle=False) as data:
            meta = PredictorMeta.model_validate(json.loads(str(data["meta"])))
            if meta.version != PREDICTOR_VERSION:
                raise ValueError(f"{path}: predictor version {meta.version}, expected "
                                 f"{PREDICTOR_VERSION}; retrain with `frugal router train`")
            if data["weights"].shape[1] != DIM:
                raise ValueError(f"{path}: feature size differs from this frugal; retrain")
            return cls(
                meta,
                data["weights"].astype(np.float32),
                data["bias"],
                data["conf_weights"],
                data["conf_bias"],
                data["calibration"],
            )


def scorecard_id(scorecard: Scorecard) -> str:
    return f"{scorecard.suite_hash}@{scorecard.created}"


def _folds(n: int, k: int, seed: int = 0) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [order[i::k] for i in range(k)]


def train_predictor(
    scorecard: Scorecard, *, l2_grid: tuple[float, ...] = (1e-5, 1e-4, 1e-3), folds: int = 3
) -> Predictor:
    """Fit both models on every item of `scorecard`; choose L2 by k-fold log loss."""
    models = list(scorecard.models)
    by_id = {item.id: item for item in scorecard.items}
    ids = [item.id for item in scorecard.items]
    results = {m: scorecard.models[m].score.result_map() for m in models}
    ids = [i for i in ids if all(i in results[m] for m in models)]
    if len(ids) < 10:
        raise ValueError("the scorecard has fewer than 10 items scored on every model")
    x = feature_matrix([by_id[i].messages for i in ids])
    y = np.array([[float(results[m][i].correct) for m in models] for i in ids])

    best_l2, best_loss, cv = l2_grid[0], math.inf, {}
    calibration = np.tile(np.array([1.0, 0.0], dtype=np.float32), (len(models), 1))
    splits = _folds(len(ids), folds)
    for l2 in l2_grid:
        held_logits = np.zeros_like(y)
        for test in splits:
            train = np.setdiff1d(np.arange(len(ids)), test)
            w, b = fit_logistic(x[train], y[train], l2)
            held_logits[test] = x[test] @ w.T + b
        calib = _platt(held_logits, y)
        held = _sigmoid(held_logits * calib[:, 0] + calib[:, 1])
        loss = np.mean([log_loss(y[:, j], held[:, j]) for j in range(len(models))])
        if loss < best_loss:
            best_l2, best_loss, calibration = l2, loss, calib
            cv = {
                m: {"log_loss": log_loss(y[:, j], held[:, j]), "auc": auc(y[:, j], held[:, j])}
                for j, m in enumerate(models)
            }
    weights, bias = fit_logistic(x, y, best_l2)

    conf_x = np.stack(
        [np.stack([confidence_features(results[m][i].logprobs) for i in ids]) for m in models]
    )
    conf_w = np.zeros((len(models), len(CONFIDENCE_FEATURES)), dtype=np.float32)
    conf_b = np.zeros(len(models), dtype=np.float32)
    for j in range(len(models)):
        w, b = fit_logistic(conf_x[j], y[:, j : j + 1], 1e-3, steps=600, lr=0.05)
        conf_w[j], conf_b[j] = w[0], b[0]

    meta = PredictorMeta(
        models=models,
        scorecard=scorecard_id(scorecard),
        trained_items=len(ids),
        l2=best_l2,
        cv=cv,
    )
    return Predictor(meta, weights, bias, conf_w, conf_b, calibration)


def _platt(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per column, (slope, intercept) of a 1-D logistic fit of `y` on `logits`."""
    out = np.zeros((y.shape[1], 2), dtype=np.float32)
    for j in range(y.shape[1]):
        w, b = fit_logistic(logits[:, j : j + 1].astype(np.float32), y[:, j : j + 1], 1e-4,
                            steps=500, lr=0.05)
        out[j] = (w[0, 0] if w.shape[1] else 1.0, b[0])
    return out
