"""Loss functions: ``forward`` returns a Python float, ``backward()`` the gradient
with respect to the predictions, both averaged over the batch.

``forward`` checks its inputs and calls ``_forward``, which computes the loss as a 0-d array on the
inputs' device without checks or a wait for the device (what a recorded CUDA graph replays, see
``step.py``)."""
from __future__ import annotations

import numpy as np

from .backend import device_of, get_array_module, is_gpu_array, to_device, to_numpy
from .checks import check_array, check_shape, no_forward


class Loss:
    """Base class: ``loss(pred, target)`` is ``loss.forward(pred, target)``."""

    def __call__(self, pred, target) -> float:
        return self.forward(pred, target)

    def _forward(self, pred, target):
        """The loss as a 0-d array on the inputs' device; no checks, keeps what ``backward`` needs."""
        raise NotImplementedError

    # A batch split into parts (``TrainStep`` on several cores): the whole batch's loss is the parts'
    # losses weighted by each part's share of the mean, and each part's gradient is scaled by that
    # share. A loss that does not say how its mean weighs the samples (one written elsewhere) is
    # not split.
    def _splittable(self) -> bool:
        """Whether any part of any batch has a defined mean, so the batch may be split."""
        return False

    def _sample_weights(self, target):
        """The weight of each sample in the mean, (B,), for the targets of a whole batch; None when
        all weigh the same (each part's share is then its size), as for MSE, whose every sample
        brings the same number of elements."""
        return None

    def __repr__(self):
        return f"{type(self).__name__}()"


def _check_labels(owner, target, batch: int, num_classes: int):
    """Integer class labels of shape (B,) in [0, num_classes)."""
    if not hasattr(target, "dtype") or target.dtype.kind not in "iu":
        kind = getattr(target, "dtype", type(target).__name__)
        raise TypeError(f"{owner}: expected integer class labels of shape (B,), got {kind}")
    if tuple(target.shape) != (batch,):
        raise ValueError(f"{owner}: expected labels of shape (B,) = ({batch},) to match the logits, "
                         f"got {tuple(target.shape)}")
    if batch:
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{owner}: labels must lie in [0, {num_classes}) for {num_classes} classes, "
                             f"got values from {lo} to {hi}")


def _check_target_like(owner, pred, target, expected: str, hint: str, pred_name: str):
    """target: finite values of pred's shape on pred's device (MSE's and BCE's targets). ``expected``
    and ``hint`` word the shape error ("expected {expected} shape (..), got (..){hint}")."""
    check_array(owner, target, "target")
    if tuple(target.shape) != tuple(pred.shape):
        raise ValueError(f"{owner}: expected {expected} shape {tuple(pred.shape)}, got {tuple(target.shape)}{hint}")
    if is_gpu_array(target) != is_gpu_array(pred):
        raise TypeError(f"{owner}: the target is on the {device_of(target).upper()} but the {pred_name} on the "
                        f"{device_of(pred).upper()}; move it with ns.to_device(t, '{device_of(pred)}')")


def _check_logits_and_labels(owner, logits, target):
    """logits: (B, K) floats, non-finite allowed (a NaN loss is what training reports); target: (B,) ints
    in [0, K) on the logits' device."""
    check_array(owner, logits, "logits", finite=False)
    check_shape(owner, logits, (None, None), "(B, num_classes)", "logits")
    _check_labels(owner, target, *logits.shape)
    if is_gpu_array(target) != is_gpu_array(logits):
        raise TypeError(f"{owner}: the labels are on the {device_of(target).upper()} but the logits on the "
                        f"{device_of(logits).upper()}; move them with ns.to_device(y, '{device_of(logits)}')")


def sigmoid(z):
    """Element-wise 1 / (1 + e^-z), without overflow for large |z| (multi-label probabilities)."""
    xp = get_array_module(z)
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e))


def softmax(z):
    """z: (B, K) logits -> (B, K) probabilities, each row's maximum subtracted first (no overflow)."""
    exp = get_array_module(z).exp(z - z.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy on raw logits, as PyTorch's ``CrossEntropyLoss``.

    logits: (B, K) floats; target: (B,) ints in [0, K).
    loss = sum_i w[y_i] * (logsumexp(z_i) - z_i[y_i]) / sum_i w[y_i], with w = 1 by default.
    The log-sum-exp subtracts each row's maximum first, so logits of any size
    (1e3, -1e3) neither overflow nor underflow.
    Gradient: (softmax(z_i) - onehot(y_i)) * w[y_i] / sum_i w[y_i].

    ``label_smoothing`` = e in [0, 1] trains towards (1 - e) onehot(y) + e / K instead of
    onehot(y), as PyTorch defines it: each sample's loss is (1 - e) w[y_i] (-log p_i[y_i]) +
    (e / K) sum_k w[k] (-log p_i[k]), over the same sum_i w[y_i]. Its gradient adds
    (e / K) (sum_k w[k] p_i - w) / sum_i w[y_i] to the first term scaled by 1 - e; unweighted,
    the whole gradient is (p_i - (1 - e) onehot(y_i) - e / K) / B.
    """

    def __init__(self, weight=None, label_smoothing: float = 0.0):
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
                or not 0 <= label_smoothing <= 1:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must lie in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)
        if weight is not None:
            check_array(self, weight, "class weight")
            if weight.ndim != 1 or bool((weight < 0).any()):
                raise ValueError(f"{self}: weight must be a 1-D array of non-negative class weights, "
                                 f"got shape {tuple(weight.shape)}")
        self.weight = weight
        self._cache = None

    def __repr__(self):
        args = [] if self.weight is None else [f"weight={self.weight.tolist()}"]
        args += [f"label_smoothing={self.label_smoothing}"] if self.label_smoothing else []
        return f"CrossEntropyLoss({', '.join(args)})"

    def forward(self, logits, target) -> float:
        """logits: (B, K), target: (B,) -> mean loss (float)."""
        _check_logits_and_labels(self, logits, target)
        with np.errstate(invalid="ignore", divide="ignore"):     # a zero total is reported just below
            loss = self._forward(logits, target)
        if self.weight is not None and float(self._total) == 0:
            self._cache = None
            raise ValueError(f"{self}: every label in the batch has class weight 0, the mean is undefined")
        return float(loss)

    def _forward(self, logits, target):
        B = logits.shape[0]
        xp = get_array_module(logits)
        shifted = logits - logits.max(axis=1, keepdims=True)              # (B, K), max 0 per row
        exp = xp.exp(shifted)
        sumexp = exp.sum(axis=1, keepdims=True)
        log_p = shifted - xp.log(sumexp)                                  # log-softmax
        rows = xp.arange(B)
        nll = -log_p[rows, target]                                         # (B,)
        class_w = None if self.weight is None else self._class_weight(xp, logits)     # (K,)
        w = xp.ones(B, dtype=logits.dtype) if class_w is None else class_w[target]
        total = self._total = w.sum()
        self._cache = (exp / sumexp, target, w / total, class_w, total)
        e = self.label_smoothing
        if not e:
            return (w * nll).sum() / total
        K = logits.shape[1]
        # -sum_k w[k] log p_i[k] / K, for every row
        smooth = -(log_p.sum(axis=1) if class_w is None else (log_p * class_w).sum(axis=1)) / K
        return ((1 - e) * (w * nll).sum() + e * smooth.sum()) / total

    def _splittable(self) -> bool:
        # with a zero class weight, a part holding only that class would have no mean
        return self.weight is None or bool((self.weight > 0).all())

    def _sample_weights(self, target):
        return None if self.weight is None else self.weight[target]

    def _class_weight(self, xp, logits):
        if self.weight.shape[0] != logits.shape[1]:
            raise ValueError(f"{self}: weight has {self.weight.shape[0]} entries but the logits have "
                             f"{logits.shape[1]} classes")
        return to_device(self.weight, device_of(logits)).astype(logits.dtype, copy=False)

    def backward(self):
        """-> dloss/dlogits: (B, K)."""
        if self._cache is None:
            raise no_forward(self)
        prob, target, scale, class_w, total = self._cache
        grad = prob.copy()
        grad[get_array_module(grad).arange(grad.shape[0]), target] -= 1
        grad *= scale[:, None]
        e = self.label_smoothing
        if e:
            K = prob.shape[1]
            if class_w is None:                          # sum_k w[k] = K and w = 1
                smooth = prob * K - 1
            else:
                smooth = prob * class_w.sum() - class_w
            grad = (1 - e) * grad + (e / K) * smooth / total
        return grad


class MSELoss(Loss):
    """Mean squared error over all elements: mean((pred - target)^2).

    pred and target: the same shape (for classification, target is one-hot).
    Gradient: 2 (pred - target) / pred.size.
    """

    def __init__(self):
        self._diff = None

    def forward(self, pred, target) -> float:
        """pred, target: same shape -> mean over every element (float)."""
        check_array(self, pred, "prediction", finite=False)
        if getattr(target, "dtype", None) is not None and target.dtype.kind in "iu" and target.ndim == 1 \
                and pred.ndim == 2 and tuple(target.shape) != tuple(pred.shape):
            # class labels where MSE needs one target value per output
            raise TypeError(f"{self}: got class labels of shape {tuple(target.shape)} as the target, but MSE needs "
                            f"one value per output, shape {tuple(pred.shape)}: pass ns.one_hot(y, {pred.shape[1]})")
        _check_target_like(self, pred, target, "a target of the prediction's",
                           "; for class labels use ns.one_hot(y, num_classes)", "prediction")
        return float(self._forward(pred, target))

    def _forward(self, pred, target):
        self._diff = pred - target.astype(pred.dtype, copy=False)
        return (self._diff * self._diff).mean()

    def _splittable(self) -> bool:
        return True

    def backward(self):
        """-> dloss/dpred, the prediction's shape."""
        if self._diff is None:
            raise no_forward(self)
        return self._diff * (2.0 / self._diff.size)


class SoftmaxMSELoss(Loss):
    """Mean squared error between the softmax probabilities and one-hot targets.

    logits: (B, K) floats; target: (B,) ints in [0, K), as for CrossEntropyLoss.
    p = softmax(z); loss = mean over all B * K elements of (p - onehot(y))^2.
    Gradient: with g = 2 (p - onehot(y)) / (B * K), the softmax's Jacobian gives
    dloss/dz = p * (g - sum_k g_k p_k), row by row.

    This is MSE as a classification network uses it when its last layer is a
    softmax, and the setting in which the paper's explanation of its weaker MSE
    runs holds: p saturates, so the gradient vanishes exactly when the network is
    confidently wrong (``examples/05_ce_vs_mse.py`` draws it). ``MSELoss`` on the
    raw logits has no such effect.
    """

    def __init__(self):
        self._cache = None

    def forward(self, logits, target) -> float:
        """logits: (B, K), target: (B,) -> mean loss (float)."""
        _check_logits_and_labels(self, logits, target)
        return float(self._forward(logits, target))

    def _forward(self, logits, target):
        prob = softmax(logits)                                             # (B, K)
        diff = prob - one_hot(target, logits.shape[1], dtype=logits.dtype)
        self._cache = (prob, diff)
        return (diff * diff).mean()

    def _splittable(self) -> bool:
        return True

    def backward(self):
        """-> dloss/dlogits: (B, K)."""
        if self._cache is None:
            raise no_forward(self)
        prob, diff = self._cache
        g = diff * (2.0 / diff.size)                                       # dloss/dprob
        return prob * (g - (g * prob).sum(axis=1, keepdims=True))


class BCEWithLogitsLoss(Loss):
    """Binary cross-entropy on logits, one independent yes/no per output (multi-label tasks), as
    ``torch.nn.BCEWithLogitsLoss`` with ``reduction="mean"``:

        loss = mean over (i, j) of  w_j [ p_j y_ij softplus(-x_ij) + (1 - y_ij) softplus(x_ij) ]

    with softplus(z) = log(1 + e^z) = -log sigmoid(-z), computed as max(z, 0) + log1p(e^-|z|), so
    that a logit of 1000 costs no overflow. x: logits (B, L); y: targets (B, L) in [0, 1];
    ``weight`` w (L,) rescales each output's loss, ``pos_weight`` p (L,) its positive term (p > 1
    weighs the rare positives up). Gradient: w (p y (sigmoid(x) - 1) + (1 - y) sigmoid(x)) / (B L),
    which is w (sigmoid(x) - y) / (B L) for p = 1.
    """

    def __init__(self, weight=None, pos_weight=None):
        self.weight = None if weight is None else _per_output(self, weight, "weight")
        self.pos_weight = None if pos_weight is None else _per_output(self, pos_weight, "pos_weight")
        self._cache = None

    def forward(self, logits, target) -> float:
        """logits, target: (B, L) -> the mean loss (float)."""
        check_array(self, logits, "logits", finite=False)
        check_shape(self, logits, (None, None), "(B, num_labels)", "logits")
        _check_target_like(self, logits, target, "targets of the logits'", " (one 0 or 1 per label)", "logits")
        for name in ("weight", "pos_weight"):
            w = getattr(self, name)
            if w is not None and w.shape[0] != logits.shape[1]:
                raise ValueError(f"{self}: {name} has {w.shape[0]} entries for {logits.shape[1]} labels")
        return float(self._forward(logits, target))

    def _forward(self, x, target):
        xp = get_array_module(x)
        y = target.astype(x.dtype, copy=False)
        weight, pos = (None if w is None else to_device(w, device_of(x)).astype(x.dtype, copy=False)
                       for w in (self.weight, self.pos_weight))
        softplus_x = xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))     # -log(1 - sigmoid(x))
        softplus_minus_x = softplus_x - x                                  # -log sigmoid(x)
        positive = y * softplus_minus_x if pos is None else pos * y * softplus_minus_x
        loss = positive + (1 - y) * softplus_x
        if weight is not None:
            loss = weight * loss
        self._cache = (x, y, weight, pos)
        return loss.mean()

    def _splittable(self) -> bool:
        return True             # every sample brings the same number of elements to the mean, as MSE

    def backward(self):
        """-> dloss/dlogits, (B, L)."""
        if self._cache is None:
            raise no_forward(self)
        x, y, weight, pos = self._cache
        sig = sigmoid(x)
        grad = (sig - y) if pos is None else pos * y * (sig - 1) + (1 - y) * sig
        if weight is not None:
            grad = weight * grad
        return grad / x.size

    def __repr__(self):
        extras = ", ".join(f"{n}=({len(w)},)" for n, w in (("weight", self.weight), ("pos_weight", self.pos_weight))
                           if w is not None)
        return f"BCEWithLogitsLoss({extras})"


def _per_output(owner, values, name):
    """A (L,) array of finite, non-negative floats (kept on the host; moved to the logits' device)."""
    a = np.asarray(to_numpy(values), dtype=np.float64)
    if a.ndim != 1 or not np.isfinite(a).all() or (a < 0).any():
        raise ValueError(f"{type(owner).__name__}: {name} must be a 1-D array of finite, non-negative values, one "
                         f"per label, got {a.shape} {a if a.size < 6 else ''}")
    return a


def one_hot(labels, num_classes: int, dtype="float32"):
    """labels: (B,) ints in [0, num_classes) -> (B, num_classes) of 0 and 1, on the labels' device.
    Labels outside the range raise ``ValueError`` naming them (NumPy would wrap a -1 round to the last
    class); on a GPU they are not checked."""
    xp = get_array_module(labels)
    labels = xp.asarray(labels)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"one_hot: num_classes must be a positive int, got {num_classes!r}")
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise ValueError(f"one_hot: expected a 1-D array of integer class labels, got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    if labels.size and not is_gpu_array(labels):     # on a GPU the check would wait for the device (and
        low, high = int(labels.min()), int(labels.max())   # break the recording of a CUDA graph)
        if low < 0 or high >= num_classes:
            bad = to_numpy(labels[(labels < 0) | (labels >= num_classes)])
            raise ValueError(f"one_hot: labels must lie in [0, {num_classes}); got {sorted(set(bad.tolist()))[:5]}")
    out = xp.zeros((labels.shape[0], num_classes), dtype=dtype)
    out[xp.arange(labels.shape[0]), labels] = 1
    return out
