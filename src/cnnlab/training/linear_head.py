"""Fine-tuning's stage 1 on cached features: a logistic-regression head fitted to convergence.

The head of a cnnlab classifier on a frozen backbone is a softmax over a linear
map of the pooled features, which is multinomial logistic regression. So stage 1
fits it as such: L-BFGS (scikit-learn) to convergence instead of a few epochs of
Adam, with the regularisation ``C`` chosen by stratified k-fold cross-validation
on the training features (no validation images spent on it), then refitted on
all of them (the C of lowest held-out log-loss). :func:`write_head` puts the weights into the Keras ``predictions``
layer, so the saved model is an ordinary Keras model whose predictions equal the
fitted classifier's.

Example:
    >>> fit = fit_logistic_head(features, one_hot_labels, seed=0)
    >>> fit.c, fit.folds, fit.cv_accuracy[fit.c]
    >>> write_head(model, fit)
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from cnnlab.errors import ModelError

__all__ = [
    "C_GRID",
    "HeadFit",
    "fit_logistic_head",
    "has_linear_head",
    "write_head",
]

# The regularisation strengths cross-validation chooses from (C=1 is scikit-learn's default).
# Pooled ImageNet features want strong regularisation: on flowers5 with all 3,453
# training images MobileNet's best C was 0.003 (0.7245 test accuracy; 0.6968 at 0.01).
C_GRID: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
MAX_ITER = 1000
MAX_FOLDS = 5
LARGE_N, LARGE_N_FOLDS = 1000, 3  # above LARGE_N images 3 folds: as good, half the time
PATIENCE = 2  # the C path stops after held-out log-loss rose at this many grid points
ABSENT_LOGIT = -30.0  # bias of a class with no training image: never predicted


@dataclass
class HeadFit:
    """A fitted head: softmax(features @ coef.T + intercept) over every class of the run."""

    c: float
    coef: np.ndarray  # (classes, features)
    intercept: np.ndarray  # (classes,)
    n: int  # training images it was fitted on
    folds: int = 0  # 0: C was not cross-validated
    cv_accuracy: dict[float, float] = field(default_factory=dict)  # held-out accuracy per C
    cv_log_loss: dict[float, float] = field(default_factory=dict)  # held-out log-loss per C
    seconds: float = 0.0

    def predict_proba(self, feats: np.ndarray) -> np.ndarray:
        logits = feats.astype("float64") @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def accuracy(self, feats: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(self.predict_proba(feats).argmax(1) == labels.argmax(1)))

    def log_loss(self, feats: np.ndarray, labels: np.ndarray) -> float:
        p = self.predict_proba(feats)[np.arange(len(labels)), labels.argmax(1)]
        return float(-np.mean(np.log(np.clip(p, 1e-12, 1.0))))


def _classifier(c: float, seed: int, warm: bool = False):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed, warm_start=warm)


def _fit(clf, x, y, w) -> None:
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    # One BLAS thread: these problems are small, and OpenBLAS' threads spinning on a
    # busy CPU made a 0.1 s fit take 2 s.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # MAX_ITER is the budget
        clf.fit(x, y, sample_weight=w)


def fold_count(y: np.ndarray) -> int:
    """Folds of stratified cross-validation: 5 (3 above ``LARGE_N`` images), fewer when a
    class has fewer images (each fold holds at least one of every class); 0 when some
    class has only one."""
    counts = np.bincount(y)
    counts = counts[counts > 0]
    if len(counts) < 2:
        return 0
    most = LARGE_N_FOLDS if len(y) > LARGE_N else MAX_FOLDS
    folds = min(most, int(counts.min()))
    return folds if folds >= 2 else 0


def choose_c(x, y, w, seed: int, grid=C_GRID):
    """``C`` with the lowest stratified k-fold log-loss (ties: the one nearest C=1).

    Log-loss, not accuracy: on flowers5 at 10-100 images per class (MobileNet
    features, 10 draws each) choosing by held-out accuracy gained 0.3-3.3 points
    over C=1 and lost up to 0.5 on some draws; by log-loss it gained 0.9-3.5 and
    lost at most 0.35 (accuracy moves in steps of one image; log-loss is smooth).
    The grid is walked from the smallest C up, every fold warm-started from the
    previous C, and the walk stops once the log-loss has risen at ``PATIENCE`` grid
    points in a row (it is unimodal in C; the large, slow-to-converge Cs are skipped).
    Returns ``(C, folds, accuracy per C, log-loss per C)`` over the Cs tried.
    """
    from sklearn.model_selection import StratifiedKFold

    folds = fold_count(y)
    if folds == 0:
        return 1.0, 0, {}, {}
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y))
    clfs = [_classifier(min(grid), seed, warm=True) for _ in splits]
    n, accuracy, log_loss, rises = len(y), {}, {}, 0
    for c in sorted(grid):
        hits, loss = 0.0, 0.0
        for clf, (tr, te) in zip(clfs, splits):
            clf.C = c
            _fit(clf, x[tr], y[tr], None if w is None else w[tr])
            p = clf.predict_proba(x[te])
            p_true = p[np.arange(len(te)), np.searchsorted(clf.classes_, y[te])]
            hits += float(np.sum(clf.classes_[p.argmax(1)] == y[te]))
            loss -= float(np.sum(np.log(np.clip(p_true, 1e-12, 1.0))))
        accuracy[c], log_loss[c] = hits / n, loss / n
        rises = rises + 1 if len(log_loss) > 1 and log_loss[c] > min(log_loss.values()) else 0
        if rises >= PATIENCE:
            break
    best = min(log_loss.values())
    near = [c for c in log_loss if log_loss[c] <= best + 1e-9]
    return min(near, key=lambda c: abs(math.log(c))), folds, accuracy, log_loss


def fit_logistic_head(
    feats: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = 0,
    sample_weight: np.ndarray | None = None,
    c: float | None = None,
) -> HeadFit:
    """Multinomial logistic regression on ``feats`` (one-hot ``labels``), ``C`` chosen by
    cross-validation unless given, refitted on every row."""
    t0 = time.time()
    x = np.asarray(feats, dtype="float64")
    y = np.asarray(labels).argmax(1)
    num_classes = np.asarray(labels).shape[1]
    folds, accuracy, log_loss = 0, {}, {}
    if c is None:
        c, folds, accuracy, log_loss = choose_c(x, y, sample_weight, seed)
    coef = np.zeros((num_classes, x.shape[1]))
    intercept = np.full(num_classes, ABSENT_LOGIT)
    present = np.unique(y)
    if len(present) == 1:
        intercept[present[0]] = 0.0
    else:
        clf = _classifier(c, seed)
        _fit(clf, x, y, sample_weight)
        rows = clf.classes_
        if len(rows) == 2:  # binary: one logit for classes_[1] against classes_[0]
            coef[rows[1]], intercept[rows[1]] = clf.coef_[0], clf.intercept_[0]
            intercept[rows[0]] = 0.0
        else:
            coef[rows], intercept[rows] = clf.coef_, clf.intercept_
    seconds = round(time.time() - t0, 2)
    return HeadFit(c, coef, intercept, len(y), folds, accuracy, log_loss, seconds)


def has_linear_head(model) -> bool:
    """True when the layers after ``pooler`` are dropout and the ``predictions`` softmax
    alone (no hidden dense layers), i.e. the head is a logistic regression."""
    names = [layer.name for layer in model.layers]
    if "pooler" not in names or "predictions" not in names:
        return False
    after = model.layers[names.index("pooler") + 1 :]
    kinds = {type(layer).__name__ for layer in after[:-1]}
    head = after[-1]
    return (
        head.name == "predictions"
        and kinds <= {"Dropout"}
        and getattr(head, "use_bias", False)
        and getattr(getattr(head, "activation", None), "__name__", "") == "softmax"
    )


def write_head(model, fit: HeadFit) -> None:
    """Write a fitted head into ``model``'s ``predictions`` layer (kernel = coef.T)."""
    if not has_linear_head(model):
        raise ModelError(
            f"Model {model.name} has no linear head to write a logistic regression into",
            expected="pooler -> [dropout] -> predictions (softmax), no hidden dense layers",
            fix="Pass --head-fit epochs to train the head by gradient descent instead",
        )
    layer = model.get_layer("predictions")
    layer.kernel.assign(fit.coef.T.astype("float32"))
    layer.bias.assign(fit.intercept.astype("float32"))
