"""Fitting the linear probe of :mod:`mlfix.scoring.probe`: a multinomial logistic regression on
standardized features, by scipy's L-BFGS (the default) or scikit-learn, as ``predict(x) -> probabilities``.

Example:
    >>> import numpy as np
    >>> x = np.r_[np.zeros((5, 2)), np.ones((5, 2))]
    >>> predict = fit_probe(x, np.r_[[0] * 5, [1] * 5], 2, l2=0.1, max_iter=100, probe="lbfgs", seed=0)
    >>> predict(np.array([[0.0, 0.0], [1.0, 1.0]])).argmax(axis=1).tolist()
    [0, 1]
"""

from __future__ import annotations

import warnings

import numpy as np


def fit_probe(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, max_iter: int, probe: str,
               seed: int):
    """Fit a standardized multinomial logistic regression; return ``predict(x) -> (n, n_classes)``."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    present = np.unique(y)
    if len(present) == 1:  # a training fold with one class: it predicts that class
        def predict_constant(z: np.ndarray) -> np.ndarray:
            out = np.zeros((len(z), n_classes))
            out[:, present[0]] = 1.0
            return out
        return predict_constant
    # Train on the classes present; unseen classes get probability 0 (columns aligned below).
    local = np.searchsorted(present, y)
    xs = (x - mean) / std
    fit = _fit_lbfgs if probe == "lbfgs" else _fit_sklearn
    predict_local = fit(xs, local, len(present), l2, max_iter, seed)

    def predict(z: np.ndarray) -> np.ndarray:
        out = np.zeros((len(z), n_classes))
        out[:, present] = predict_local((z - mean) / std)
        return out
    return predict


def _fit_lbfgs(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, max_iter: int, seed: int):
    """Multinomial logistic regression by scipy's L-BFGS on numpy BLAS (no torch, no sklearn overhead):
    :func:`lbfgs_weights`, as ``predict(z) -> (n, n_classes)``."""
    from scipy.special import softmax

    w, b = lbfgs_weights(x, y, n_classes, l2, max_iter)
    return lambda z: softmax((np.asarray(z, dtype=np.float32) @ w + b).astype(np.float64), axis=1)


def lbfgs_weights(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, max_iter: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """``(W (D, C), b (C,))`` float32 of the multinomial logistic regression of ``y`` on ``x``.

    Objective: mean cross-entropy + 0.5 * l2 * ||W||^2 (bias not penalised); zero start, so the result
    is deterministic (the problem is convex: the start does not change the optimum).
    """
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    onehot = np.zeros((n, n_classes), dtype=np.float32)
    onehot[np.arange(n), y] = 1.0

    def loss_and_grad(theta: np.ndarray):
        w = theta[: d * n_classes].reshape(d, n_classes).astype(np.float32)
        b = theta[d * n_classes:].astype(np.float32)
        logits = x @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        loss = -float((log_p * onehot).sum()) / n + 0.5 * l2 * float((w.astype(np.float64) ** 2).sum())
        delta = (np.exp(log_p) - onehot) / n
        grad_w = (x.T @ delta).astype(np.float64) + l2 * w
        return loss, np.concatenate([grad_w.ravel(), delta.sum(axis=0).astype(np.float64)])

    theta0 = np.zeros(d * n_classes + n_classes)
    # One BLAS thread: L-BFGS makes thousands of tiny vector operations, and multi-threaded OpenBLAS
    # spin-waits on each of them; on a busy 2-core machine that made a 400-sample fit 20x slower.
    with threadpool_limits(limits=1, user_api="blas"):
        result = minimize(loss_and_grad, theta0, jac=True, method="L-BFGS-B",
                          options={"maxiter": max_iter, "gtol": 1e-5})
    w = result.x[: d * n_classes].reshape(d, n_classes).astype(np.float32)
    b = result.x[d * n_classes:].astype(np.float32)
    return w, b


def _fit_sklearn(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, max_iter: int, seed: int):
    from sklearn.linear_model import LogisticRegression

    # sklearn minimises C * sum(loss) + 0.5 ||w||^2, i.e. mean loss + 0.5 / (C n) ||w||^2.
    model = LogisticRegression(C=1.0 / (l2 * len(y)), max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter: the probe is good enough
        model.fit(x, y)
    return lambda z: model.predict_proba(z)
