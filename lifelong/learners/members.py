"""The online members' learners: each learns every label in closed form or one SGD step, no rounds.

:class:`StreamingLDA` (a linear discriminant from exact, optionally decaying sums),
:class:`RestartingLDA` (one that restarts its classes when its errors rise),
:class:`OnlineLogistic` (SGD logistic regression on the scaled inputs) and
:class:`PriorCounts` (the recent labels' most frequent class). Each takes the mapped
features of :class:`~lifelong.learners.heads.Heads` and gives linear scores
(coefficients over those features and a bias per class), so serving computes every
member in one product; see :mod:`lifelong.learners.heads`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from river import drift

SHRINK = 0.01  # the covariance is shrunk at least this far toward its average variance (see shrinkage)
PRIOR_HALF_LIFE = 100  # labels: the prior member's class counts fade this fast


def shrinkage(covariance: torch.Tensor, samples: float) -> float:
    """How far to shrink ``covariance``, estimated from ``samples``, toward its average variance.

    The Oracle Approximating Shrinkage (Chen, Wiesel, Eldar & Hero, 2010; as
    scikit-learn's ``OAS`` computes it from the empirical covariance): large while the
    samples are few for the features (a new stream, a head that remembers a few hundred
    labels of a few hundred features), toward nothing as they grow; at least ``SHRINK``,
    so the solve stays well conditioned.
    """
    features = covariance.shape[0]
    mu = float(torch.diagonal(covariance).mean())
    alpha = float(torch.linalg.vector_norm(covariance)) ** 2 / covariance.numel()  # no copy of a wide one
    denominator = (samples + 1.0) * (alpha - mu * mu / features)
    oas = 1.0 if denominator <= 0 else min((alpha + mu * mu) / denominator, 1.0)
    return max(SHRINK, oas)


class PriorCounts:
    """The most frequent class of the recent labels (class 0 before any): what to answer with no model.

    A member like any other: the vote trusts it only where it is right (a stream with
    a dominant class), and it is what is served before the first labels have come.
    """

    def __init__(self, *, classes: int, half_life: int = PRIOR_HALF_LIFE) -> None:
        self.decay = 0.5 ** (1.0 / half_life)
        self.weight = torch.zeros(classes, dtype=torch.float64)

    def learn(self, y: torch.Tensor) -> None:
        n = len(y)
        age = torch.arange(n - 1, -1, -1, dtype=torch.float64)
        self.weight *= self.decay**n
        self.weight.index_add_(0, y, self.decay**age)

    def fit(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """No coefficients; the log of each class's (decayed) count (equal before any label: class 0)."""
        return torch.zeros(len(self.weight), width), torch.log(self.weight.clamp(min=1e-9)).float()


class OnlineLogistic:
    """Multinomial logistic regression on the scaled inputs, one SGD step per label (a constant rate).

    The constant rate is its memory: it follows a gradually moving boundary the way
    River's ``LogisticRegression`` does, where a discriminant of Gaussian classes
    fits it less well.
    """

    def __init__(self, *, features: int, width: int, classes: int, rate: float) -> None:
        self.features = features
        self.width = width
        self.rate = rate
        self.coef = np.zeros((classes, features))
        self.bias = np.zeros(classes)

    def learn(self, f: torch.Tensor, y: torch.Tensor) -> None:
        """One step per row of the scaled inputs (the first ``features`` columns of ``f``), oldest first."""
        z = f[:, : self.features].numpy()
        labels = y.numpy()
        coef, bias, rate = self.coef, self.bias, self.rate
        for row, label in zip(z, labels, strict=True):
            scores = coef @ row + bias
            p = np.exp(scores - scores.max())
            p /= p.sum()
            p[label] -= 1.0
            coef -= rate * np.outer(p, row)
            bias -= rate * p

    def fit(self) -> tuple[torch.Tensor, torch.Tensor]:
        coef = torch.zeros(len(self.bias), self.width)
        coef[:, : self.features] = torch.from_numpy(self.coef).float()
        return coef, torch.from_numpy(self.bias).float()

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.coef": torch.from_numpy(self.coef.copy()),
            f"{prefix}.bias": torch.from_numpy(self.bias.copy()),
        }

    def restore(self, prefix: str, tensors: dict[str, torch.Tensor], learned: int) -> None:
        for name in ("coef", "bias"):
            value = tensors[f"{prefix}.{name}"].to(torch.float64).numpy()
            if value.shape != getattr(self, name).shape:
                raise ValueError(
                    f"{prefix}.{name} has shape {value.shape}, the member needs {getattr(self, name).shape}"
                )
            setattr(self, name, value.copy())


class StreamingLDA:
    """Class means and a shared covariance as decayed exact sums; predicts by the linear discriminant.

    ``half_life`` 0: every sample counts forever (streaming LDA). Else a sample's
    weight halves after ``half_life`` newer labels, except that a class's mean and
    weight do not fade while it is absent (the fading across a gap in its labels
    stops at one half-life): a class not seen for a while is not a class that
    changed, so it keeps what it was when last seen (a class-incremental stream
    forgets no class), while a class whose samples move is followed as they come.

    Predicting solves the shared covariance for the class means: its inverse (through a
    Cholesky factor, cubic in ``width``; kept in float32), then a product with the means,
    quadratic. With ``refactor`` > 0 the inverse is kept until the labels learned since
    it reach that share of those it was made from, or of ``width`` while it was made
    from fewer (a covariance of thousands of labels moves little in a few more; one of
    fewer labels than features is mostly its shrinkage), or until a class has twice the
    weight it had then (a new class from its first label: it spreads in directions the
    kept inverse never saw, and its mean solved against that inverse is trusted most
    exactly where it is least known). The means are solved against it at every
    :meth:`fit` (one pass over the inverse, where triangular solves read a factor twice
    its size twice, on one core).
    """

    def __init__(self, *, width: int, classes: int, half_life: int = 0, refactor: float = 0.0) -> None:
        self.width = width
        self.classes = classes
        self.half_life = half_life
        self.refactor = refactor
        self.decay = 0.5 ** (1.0 / half_life) if half_life else 1.0
        self.weight = torch.zeros(classes, dtype=torch.float64)  # per class: sum of sample weights
        self.sums = torch.zeros(classes, width, dtype=torch.float64)  # per class: weighted sum of features
        self.outer = torch.zeros(width, width, dtype=torch.float64)  # weighted sum of x x^T
        # Each class's weight and sum decayed by its own labels (the means' and priors'); the same as
        # weight and sums when nothing decays.
        self.class_weight = self.weight.clone()
        self.class_sums = self.sums.clone()
        self.last_seen = torch.zeros(classes, dtype=torch.float64)  # label count at each class's last label
        self.learned = 0
        self._fitted: tuple[torch.Tensor, torch.Tensor] | None = None
        self._fitted_at = -1
        self._inverse: torch.Tensor | None = None  # of the shrunk covariance (float32)
        self._factored_at = -1
        self._factored_weight = self.class_weight.clone()  # each class's weight when it was made

    def learn(self, f: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch of feature rows ``f`` (float64) with labels ``y``, oldest first."""
        n = len(y)
        if not n:
            return
        if self.decay < 1.0:
            age = torch.arange(n - 1, -1, -1, dtype=torch.float64)
            w = self.decay**age
            fade = self.decay**n
            self.weight *= fade
            self.sums *= fade
            self.outer *= fade
            for c in torch.unique(y).tolist():
                at = torch.nonzero(y == c).flatten()  # positions in the batch, oldest first
                first, last = self.learned + int(at[0]), self.learned + int(at[-1])
                gap = min(first - float(self.last_seen[c]), self.half_life)
                fade_c = self.decay ** (gap + last - first)
                own = w[at] / w[at[-1]]  # ages counted from the class's own last label
                self.class_weight[c] = self.class_weight[c] * fade_c + own.sum()
                self.class_sums[c] = self.class_sums[c] * fade_c + own @ f[at]
                self.last_seen[c] = last
        else:
            w = torch.ones(n, dtype=torch.float64)
        self.weight.index_add_(0, y, w)
        self.sums.index_add_(0, y, f * w[:, None])
        self.outer.addmm_((f * w[:, None]).T, f)  # in place: a wide head's matrix is hundreds of MB
        if self.decay == 1.0:
            self.class_weight.index_add_(0, y, w)
            self.class_sums.index_add_(0, y, f * w[:, None])
        self.learned += n

    def invalidate(self) -> None:
        """The sums were changed in place: solve the discriminant again at the next :meth:`fit`."""
        self._fitted, self._fitted_at = None, -1
        self._inverse, self._factored_at = None, -1

    @property
    def seen(self) -> torch.Tensor:
        """Classes learned (a class keeps its weight while it is absent)."""
        return self.class_weight > 1e-12

    def fit(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The discriminant (coefficients, classes x width, and biases; float32) of what was learned.

        Solved again only after new samples.
        """
        if self._fitted is None or self._fitted_at != self.learned:
            self._fitted, self._fitted_at = self._solve(), self.learned
        return self._fitted

    def _covariance_inverse(self) -> torch.Tensor:
        """The inverse of the shrunk covariance, made again when it is due (see the class)."""
        due = (
            self._factored_at < 0
            or self.learned - self._factored_at >= self.refactor * max(self._factored_at, self.width)
            or bool((self.class_weight > 2.0 * self._factored_weight).any())
        )
        if self._inverse is not None and not due:
            return self._inverse
        self._inverse = None  # the old one goes before the new one is made
        # The scatter of the (decayed) samples around their (equally decayed) class means.
        recent = self.weight > 1e-12
        total = float(self.weight.sum())
        centers = self.sums[recent] / self.weight[recent, None]
        # In place: a wide head's matrix is hundreds of MB (symmetric up to rounding, as the sums are).
        within = torch.addmm(self.outer, centers.T, self.sums[recent], alpha=-1.0)
        within.div_(max(total, 1e-12))
        average = float(torch.diagonal(within).mean().clamp(min=0.0))
        # The samples behind it: the (decayed) weights less one per class mean estimated.
        shrink = shrinkage(within, max(total - int(recent.sum()), 1.0))
        within.mul_(1 - shrink)
        within.diagonal().add_(shrink * average + 1e-6)
        factor: torch.Tensor
        factor, info = torch.linalg.cholesky_ex(within)
        if int(info):  # not positive definite in float64 rounding: more of the average variance
            within.diagonal().add_(shrink * average + 1e-3)
            factor = torch.linalg.cholesky(within)
        del within
        self._inverse, self._factored_at = torch.cholesky_inverse(factor).float(), self.learned
        self._factored_weight = self.class_weight.clone()
        return self._inverse

    def _solve(self) -> tuple[torch.Tensor, torch.Tensor]:
        seen = self.seen
        means = torch.zeros_like(self.class_sums)
        means[seen] = self.class_sums[seen] / self.class_weight[seen, None]
        coef = (means.float() @ self._covariance_inverse()).double()  # classes x width (it is symmetric)
        prior = torch.log((self.class_weight / self.class_weight.sum().clamp(min=1e-12)).clamp(min=1e-12))
        bias = -0.5 * (coef * means).sum(1) + prior
        bias[~seen] = -math.inf
        return coef.float(), bias.float()

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.{name}": getattr(self, name).clone()
            for name in ("weight", "sums", "outer", "class_weight", "class_sums", "last_seen")
        }

    def restore(self, prefix: str, tensors: dict[str, torch.Tensor], learned: int) -> None:
        """Continue from :meth:`state`. The covariance inverse is not saved (it is as large as the
        sums): a head with ``refactor`` makes it again from the restored sums at its next fit, so
        until its next due solve it predicts with a covariance as new as or newer than before."""
        for name in ("weight", "sums", "outer", "class_weight", "class_sums", "last_seen"):
            value = tensors[f"{prefix}.{name}"].to(torch.float64)
            if value.shape != getattr(self, name).shape:
                raise ValueError(
                    f"{prefix}.{name} has shape {tuple(value.shape)}, the head needs "
                    f"{tuple(getattr(self, name).shape)}"
                )
            setattr(self, name, value.clone())
        self.learned = learned
        self.invalidate()


class RestartingLDA:
    """A streaming LDA that never forgets until its own errors say the world changed, then restarts.

    It predicts each batch before learning it and feeds its errors to ADWIN (river's
    adaptive window, checked every ``clock`` labels). When ADWIN finds the error rate
    has risen, the classes among the last ``keep`` labels are marked: each restarts its
    mean and weight from the labels after the cut ADWIN found as soon as one of them is
    of that class (at once for those already there). A class that does not come back
    keeps its own: absent is not changed (a class-incremental stream loses no class to
    a new task's errors). The shared covariance restarts too, from the labels after the
    cut, with what it had learned before kept as a prior worth ``carried`` samples: a
    change of concept reshapes the classes (their spread around their means with them),
    so the old scatter would misplace the new boundary, while the first few labels after
    a change alone would estimate it badly. Between changes it weighs every label alike,
    the best a head can do on a stable concept; after an abrupt change it drops the old
    concept as soon as its labels come, where a decaying head needs a few half-lives.

    ADWIN's window is not saved: after a restart of the daemon it starts empty.
    """

    def __init__(
        self,
        *,
        width: int,
        classes: int,
        keep: int = 1000,
        delta: float = 0.002,
        clock: int = 8,
        carried: float = 100.0,
    ) -> None:
        self.width = width
        self.classes = classes
        self.keep = keep
        self.delta = delta
        self.clock = clock
        self.carried = carried
        self.lda = StreamingLDA(width=width, classes=classes)
        self.detector = drift.ADWIN(delta=delta, clock=clock)
        self.recent_f = torch.zeros(0, width)  # the last ``keep`` rows learned, float32
        self.recent_y = torch.zeros(0, dtype=torch.int64)
        self.recent_wrong = torch.zeros(0, dtype=torch.bool)  # whether it predicted each of them wrong
        self.pending = torch.zeros(classes, dtype=torch.bool)  # classes to restart when they come
        self.cut = 0  # the label count at the last change found
        self.restarts = 0

    @property
    def learned(self) -> int:
        return self.lda.learned

    def learn(self, f: torch.Tensor, y: torch.Tensor) -> None:
        if not len(y):
            return
        changed = False
        wrong = torch.zeros(len(y), dtype=torch.bool)
        if bool(self.lda.seen.any()):
            coef, bias = self.lda.fit()
            wrong = torch.addmm(bias, f.float(), coef.T).argmax(1) != y
            for error in wrong.tolist():
                before = self.detector.estimation
                self.detector.update(float(error))
                # A change for the better (the errors fell) is no reason to restart.
                changed = changed or (self.detector.drift_detected and self.detector.estimation > before)
        self.recent_f = torch.cat([self.recent_f, f.float()])[-self.keep :]
        self.recent_y = torch.cat([self.recent_y, y])[-self.keep :]
        self.recent_wrong = torch.cat([self.recent_wrong, wrong])[-self.keep :]
        self.lda.learn(f, y)
        if changed:
            self.cut = self.lda.learned - self._since_change(
                min(int(self.detector.width), len(self.recent_y))
            )
            self.pending = torch.zeros(self.classes, dtype=torch.bool)
            self.pending[self.recent_y] = True
            self.restarts += 1
            self._restart_scatter()
        if not bool(self.pending.any()):
            return
        f, labels, _ = self._since_cut()
        weight = torch.zeros_like(self.lda.class_weight).index_add_(
            0, labels, torch.ones(len(labels), dtype=torch.float64)
        )
        back = self.pending & (weight > 0)  # marked classes that have come since the change
        if bool(back.any()):
            sums = torch.zeros_like(self.lda.class_sums).index_add_(0, labels, f.double())
            self.lda.class_weight[back] = weight[back]
            self.lda.class_sums[back] = sums[back]
            self.pending &= ~back

    def _since_change(self, window: int) -> int:
        """How many of the recent labels came after the change: where their errors rose most clearly.

        ADWIN tells that the errors rose and keeps a window of ``window`` labels after its
        cut, checked every ``clock`` labels, so its cut lags the change by up to a few dozen
        labels (the first labels of the new concept would be left out of the restart). The
        change is placed instead where the recent errors split best into a lower rate before
        and a higher one after (the split of the greatest Bernoulli likelihood), among the
        labels since the last cut; ADWIN's window when no split raises the rate.
        """
        errors = self._since_cut()[2].double()
        m = len(errors)
        if m < 2:
            return window
        k = torch.arange(1, m, dtype=torch.float64)  # labels before the split
        before = torch.cumsum(errors, 0)[:-1] / k
        after = (errors.sum() - torch.cumsum(errors, 0)[:-1]) / (m - k)

        def loglik(p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            p = p.clamp(1e-9, 1 - 1e-9)
            return n * (p * p.log() + (1 - p) * (1 - p).log())

        score = loglik(before, k) + loglik(after, m - k)
        score[after <= before] = -math.inf
        if not bool(torch.isfinite(score).any()):
            return window
        return int(m - k[int(score.argmax())])

    def _since_cut(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The recent rows, labels and errors learned since the last change found (as many as are kept)."""
        since = min(self.lda.learned - self.cut, len(self.recent_y))
        start = len(self.recent_y) - since
        return self.recent_f[start:], self.recent_y[start:], self.recent_wrong[start:]

    def _restart_scatter(self) -> None:
        """The covariance's sums from the labels after the cut, what came before worth ``carried`` samples."""
        lda = self.lda
        f, y, _ = self._since_cut()
        f, since = f.double(), len(y)
        weight = torch.zeros_like(lda.weight).index_add_(0, y, torch.ones(since, dtype=torch.float64))
        sums = torch.zeros_like(lda.sums).index_add_(0, y, f)
        outer = f.T @ f
        before = float(lda.weight.sum()) - since
        keep = min(1.0, self.carried / before) if before > 0 else 0.0
        lda.weight = (lda.weight - weight) * keep + weight
        lda.sums = (lda.sums - sums) * keep + sums
        lda.outer = (lda.outer - outer) * keep + outer
        lda.invalidate()

    def fit(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lda.fit()

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        return self.lda.state(prefix) | {
            f"{prefix}.recent_f": self.recent_f.clone(),
            f"{prefix}.recent_y": self.recent_y.clone(),
            f"{prefix}.recent_wrong": self.recent_wrong.clone(),
            f"{prefix}.pending": self.pending.clone(),
            f"{prefix}.cut": torch.tensor([self.cut], dtype=torch.int64),
        }

    def restore(self, prefix: str, tensors: dict[str, torch.Tensor], learned: int) -> None:
        self.lda.restore(prefix, tensors, learned)
        self.recent_f = tensors[f"{prefix}.recent_f"].float().clone()
        self.recent_y = tensors[f"{prefix}.recent_y"].to(torch.int64).clone()
        self.recent_wrong = tensors[f"{prefix}.recent_wrong"].to(torch.bool).clone()
        self.pending = tensors[f"{prefix}.pending"].to(torch.bool).clone()
        self.cut = int(tensors[f"{prefix}.cut"][0])
        self.detector = drift.ADWIN(delta=self.delta, clock=self.clock)
