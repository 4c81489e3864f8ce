"""Saying "I don't know": calibrated probabilities, a novelty score and the unknown threshold.

After training, :func:`fit_calibration` looks at the validation split (never at the rows the
head was trained on) and learns three things, kept in the checkpoint as a
:class:`Calibration`:

- a **temperature** ``T``: probabilities are ``softmax(logits / T)``, with ``T`` the value
  that minimises the validation negative log-likelihood (Guo et al. 2017). It moves
  confidence, never the ranking of the classes.
- a **novelty score** per image, higher meaning less like any known class:
  ``"combined"`` (default: the sum of the ``msp`` and ``rmaha`` scores, each standardised
  on the validation images), ``"rmaha"`` (relative Mahalanobis distance of the backbone
  features: to the nearest class Gaussian minus to the Gaussian of all training images,
  Ren et al. 2021), ``"knn"`` (cosine distance to the ``k``-th nearest stored training
  feature), ``"energy"`` (``-T logsumexp(logits / T)``), ``"max_logit"`` (minus the
  largest logit) or ``"msp"`` (one minus the largest calibrated probability).
  ``benchmarks/open_set.py`` compares them (docs/unknown.md).
- a **threshold** on that score: the ``target_recall`` quantile of the validation images'
  scores, so about that share of photos of known flowers stays below it; above it, a photo
  is reported as unknown.

The head is :func:`~petalnet.head.build_head`'s ``Sequential`` ending in ``LogSoftmax``; its
input is the backbone features (what ``knn`` and ``rmaha`` measure), the input of its last
module the logits.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypedDict, get_args

import torch
from torch import nn

from petalnet import distributed
from petalnet._types import NoveltyScore

__all__ = [
    "CALIBRATION_SIZE",
    "NOVELTY_SCORES",
    "Calibration",
    "HeadOutput",
    "NoveltyScore",
    "ReliabilityBin",
    "calibration_metrics",
    "fit_calibration",
    "fit_gaussians",
    "fit_temperature",
    "novelty_scores",
    "reliability_bins",
    "sample_rows",
]

NOVELTY_SCORES: tuple[NoveltyScore, ...] = get_args(NoveltyScore)
BANK_SIZE = 4096
"""Training feature rows ``knn`` keeps (float16: 10 MB at 1280 features) and ``rmaha``
fits its Gaussians on (which keep two ``D x D`` float32 matrices: 13 MB at 1280)."""


RIDGE = 0.015
"""Ridge of the ``rmaha`` covariances, relative to the mean within-class variance."""


CALIBRATION_SIZE = 4096
"""Validation images calibration fits on at most (evenly spaced over the split): the
temperature, the novelty normalisation, the unknown threshold and the reported metrics.
With test-time views only these images' views are computed, so calibrating a split of
150 000 photos costs what 4 096 do and its stacked rows stay bounded (4 096 images x 6
views x 1 280 features: 126 MB). The threshold's recall on 4 096 known images is within
about +-0.35 points (one standard error at 95 %)."""


def sample_rows(n: int, size: int = BANK_SIZE) -> torch.Tensor:
    """Indices of at most ``size`` of ``n`` rows, spread evenly over them.

    Under ``torchrun`` ``n`` is this rank's share and the sample is this rank's part of
    one sample of ``size`` (:func:`fit_calibration` gathers the parts).

    Args:
        n: Number of rows.
        size: How many rows the whole sample (every rank's part) holds at most.

    Returns:
        ``(min(n, size / ranks),)`` int64 indices, in order.
    """
    size = min(n, size // distributed.world_size())
    return torch.linspace(0, n - 1, size).long() if n else torch.arange(0)


OUTPUT_CHUNK = 4096
"""Rows the head and the novelty score see at once when scoring many images."""


class HeadOutput(NamedTuple):
    """What the head says of a batch of images.

    Attributes:
        log_probs: ``(N, C)`` calibrated log-probabilities (views averaged).
        novelty: ``(N,)`` novelty scores (higher: less like any known class).
        unknown: ``(N,)`` whether each score is above the threshold (all ``False`` without one).
    """

    log_probs: torch.Tensor
    novelty: torch.Tensor
    unknown: torch.Tensor


@dataclass
class Calibration:
    """The temperature, novelty score and threshold learned on the validation split.

    Attributes:
        temperature: Divides the logits before the softmax (1: uncalibrated).
        score: Which novelty score (see the module docs).
        bank: ``(M, D)`` unit-length training features for ``knn`` (float16), or ``None``.
        k: Neighbour rank of the ``knn`` score.
        gauss: For ``rmaha`` and ``combined``: ``means`` ``(C, D)`` of the training features
            per class, ``precision`` ``(D, D)`` their shared inverse covariance, and
            ``bg_mean``/``bg_precision`` of all classes together.
        norm: For ``combined``: mean and standard deviation of the ``msp`` and ``rmaha``
            scores of the validation images (``msp_mean``, ``msp_std``, ...).
        threshold: Scores above it are unknown; ``None``: never unknown (no validation split).
        target_recall: Share of known validation images the threshold keeps below it.
        metrics: Validation ``ece``/``nll``/``brier`` before and after scaling (``*_raw``).
    """

    temperature: float = 1.0
    score: NoveltyScore = "combined"
    bank: torch.Tensor | None = None
    k: int = 10
    gauss: dict[str, torch.Tensor] = field(default_factory=dict)
    norm: dict[str, float] = field(default_factory=dict)
    threshold: float | None = None
    target_recall: float = 0.95
    metrics: dict[str, float] = field(default_factory=dict)

    def outputs(self, head: nn.Module, views: torch.Tensor, device: torch.device) -> HeadOutput:
        """Run ``head`` on features and return calibrated log-probabilities and novelty.

        Args:
            head: The classifier (a ``Sequential`` ending in ``LogSoftmax``).
            views: ``(N, D)`` features, or ``(V, N, D)`` for ``V`` views of each image.
            device: Where the head runs.

        Returns:
            Log-probabilities, novelty scores and unknown flags, on the CPU.
        """
        stacked = views if views.ndim == 3 else views.unsqueeze(0)
        parts = []
        with torch.no_grad():  # bounded memory for any N: a chunk of rows at a time
            for start in range(0, max(stacked.shape[1], 1), OUTPUT_CHUNK):
                chunk = stacked[:, start : start + OUTPUT_CHUNK]
                logits = torch.stack([head_logits(head, v.to(device)) for v in chunk])
                parts.append(self.judge(logits, chunk.float()))
        return HeadOutput(*(torch.cat(p) for p in zip(*parts, strict=True)))

    def judge(self, logits: torch.Tensor, embeddings: torch.Tensor) -> HeadOutput:
        """Calibrated log-probabilities and novelty of ``(V, N, C)`` logits of ``V`` views."""
        probs = (logits / self.temperature).softmax(-1).mean(0)
        novelty = self.novelty(logits, embeddings, self.score)
        unknown = (
            novelty > self.threshold
            if self.threshold is not None
            else torch.zeros(len(novelty), dtype=torch.bool)
        )
        return HeadOutput(probs.clamp_min(1e-30).log(), novelty, unknown)

    def novelty(
        self, logits: torch.Tensor, embeddings: torch.Tensor, score: NoveltyScore
    ) -> torch.Tensor:
        """``score`` of ``(V, N, C)`` logits and ``(V, N, D)`` features, averaged over views."""
        if score == "combined":
            parts = [
                (self.novelty(logits, embeddings, part) - self.norm.get(f"{part}_mean", 0.0))
                / max(self.norm.get(f"{part}_std", 1.0), 1e-12)
                for part in ("msp", "rmaha")
            ]
            return parts[0] + parts[1]
        if score == "rmaha" and not self.gauss:
            score = "msp"  # nothing fitted (no training rows): the head alone
        return novelty_scores(
            logits,
            embeddings,
            score,
            temperature=self.temperature,
            bank=self.bank,
            k=self.k,
            gauss=self.gauss,
        )

    def fit_scores(
        self,
        train: torch.Tensor,
        train_labels: torch.Tensor,
        logits: torch.Tensor,
        embeddings: torch.Tensor,
    ) -> None:
        """Fit what :attr:`score` needs: the knn bank, the Gaussians, the normalisation.

        Args:
            train: ``(M, D)`` training features (a sample of at most :data:`BANK_SIZE`).
            train_labels: ``(M,)`` their classes.
            logits: ``(N, C)`` validation logits (for ``combined``'s normalisation), or
                ``(V, N, C)`` of ``V`` test-time views.
            embeddings: ``(N, D)`` validation features, or ``(V, N, D)``.
        """
        if logits.ndim == 2:
            logits, embeddings = logits[None], embeddings[None]
        if self.score == "knn" and len(train):
            self.bank = nn.functional.normalize(train, dim=-1).half()
        if self.score in ("rmaha", "combined") and len(train) > 1:
            self.gauss = fit_gaussians(train, train_labels)
        if self.score == "combined" and logits.shape[1]:
            for part in ("msp", "rmaha"):
                values = self.novelty(logits, embeddings, part)
                self.norm[f"{part}_mean"] = float(values.mean())
                self.norm[f"{part}_std"] = float(values.std()) if len(values) > 1 else 1.0

    def to_payload(self) -> dict[str, Any]:
        """Tensors and plain values only, for a ``weights_only`` checkpoint."""
        return {
            "temperature": self.temperature,
            "score": self.score,
            "bank": self.bank,
            "k": self.k,
            "gauss": dict(self.gauss),
            "norm": dict(self.norm),
            "threshold": self.threshold,
            "target_recall": self.target_recall,
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_payload(cls, data: Mapping[str, Any] | None) -> Calibration:
        """Rebuild from :meth:`to_payload`.

        ``None`` (a checkpoint from before calibration) gives ``T = 1`` and no threshold:
        the probabilities as they were, never unknown.
        """
        if not data:
            return cls(score="msp")
        score = data.get("score", "msp")
        bank = data.get("bank")
        return cls(
            temperature=float(data.get("temperature", 1.0)),
            score=score if score in NOVELTY_SCORES else "msp",
            bank=bank if isinstance(bank, torch.Tensor) else None,
            k=int(data.get("k", 10)),
            gauss={
                str(k): v for k, v in dict(data.get("gauss") or {}).items() if torch.is_tensor(v)
            },
            norm={str(k): float(v) for k, v in dict(data.get("norm") or {}).items()},
            threshold=None if data.get("threshold") is None else float(data["threshold"]),
            target_recall=float(data.get("target_recall", 0.95)),
            metrics={str(k): float(v) for k, v in dict(data.get("metrics") or {}).items()},
        )


@torch.inference_mode()
def head_logits(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The head's logits (the input of its final ``LogSoftmax``), float32 on the CPU."""
    head.eval()
    if isinstance(head, nn.Sequential) and isinstance(head[-1], nn.LogSoftmax):
        out: torch.Tensor = head[:-1](features)
    else:  # a head of another shape: its log-probabilities are logits up to a constant
        out = head(features)
    return out.float().cpu()


def novelty_scores(
    logits: torch.Tensor,
    embeddings: torch.Tensor,
    score: NoveltyScore,
    *,
    temperature: float = 1.0,
    bank: torch.Tensor | None = None,
    k: int = 10,
    gauss: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One novelty score per image, averaged over views; higher: less like a known class.

    Args:
        logits: ``(V, N, C)`` logits of ``V`` views.
        embeddings: ``(V, N, D)`` backbone features of the same views.
        score: Which score (see the module docs).
        temperature: The calibration temperature.
        bank: ``(M, D)`` unit-length training features (``knn`` only; without it, ``knn``
            falls back to ``energy``).
        k: Neighbour rank of ``knn``.
        gauss: From :func:`fit_gaussians` (``rmaha`` only).

    Returns:
        ``(N,)`` float32 scores (``combined`` needs :meth:`Calibration.novelty`).

    Raises:
        ValueError: Unknown ``score``.
    """
    if score == "msp":
        return 1 - (logits / temperature).softmax(-1).mean(0).amax(-1)
    if score == "max_logit":
        return -logits.amax(-1).mean(0)
    if score == "energy" or (score == "knn" and (bank is None or len(bank) == 0)):
        return -(temperature * (logits / temperature).logsumexp(-1)).mean(0)
    if score == "knn":
        assert bank is not None
        unit = nn.functional.normalize(embeddings.float(), dim=-1)
        sims = unit @ bank.float().T  # (V, N, M)
        kth = sims.topk(min(k, sims.shape[-1]), dim=-1).values[..., -1]
        return (1 - kth).mean(0)
    if score == "rmaha" and gauss:
        per_class = _mahalanobis(embeddings.float(), gauss["means"], gauss["precision"])
        background = _mahalanobis(embeddings.float(), gauss["bg_mean"][None], gauss["bg_precision"])
        return (per_class - background).amin(-1).mean(0)
    raise ValueError(f"score must be one of {', '.join(NOVELTY_SCORES)}; got {score!r}.")


def _mahalanobis(x: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distances ``(..., C)`` of rows ``x`` ``(..., D)`` to ``C`` means."""
    xp = x @ precision
    return (xp * x).sum(-1, keepdim=True) - 2 * xp @ means.T + ((means @ precision) * means).sum(-1)


def fit_gaussians(features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Class means with a shared covariance, and one Gaussian of all classes together.

    What the relative Mahalanobis distance (Ren et al. 2021) compares: how much closer a
    photo is to its nearest class than to the training images as a whole. Both covariances
    get the same small ridge (:data:`RIDGE` times the mean within-class variance) so that
    they invert.

    Args:
        features: ``(M, D)`` training features.
        labels: ``(M,)`` their classes (absent classes get the overall mean).

    Returns:
        ``means`` ``(C, D)``, ``precision`` ``(D, D)``, ``bg_mean`` ``(D,)``,
        ``bg_precision`` ``(D, D)``, all float32.
    """
    x = features.double()
    classes = int(labels.max()) + 1
    bg_mean = x.mean(0)
    means = torch.stack(
        [x[labels == c].mean(0) if (labels == c).any() else bg_mean for c in range(classes)]
    )

    within = x - means[labels]
    # one ridge for both covariances: 1.5 % of the mean within-class variance (chosen on the
    # open-set benchmark's selection species, not on the reported ones)
    ridge = RIDGE * float(within.var(0).mean()) + 1e-8

    def precision(centred: torch.Tensor) -> torch.Tensor:
        cov = centred.T @ centred / max(len(centred) - 1, 1)
        inverse: torch.Tensor = torch.linalg.inv(cov + ridge * torch.eye(len(cov), dtype=cov.dtype))
        return inverse

    return {
        "means": means.float(),
        "precision": precision(within).float(),
        "bg_mean": bg_mean.float(),
        "bg_precision": precision(x - bg_mean).float(),
    }


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels``.

    Args:
        logits: ``(N, C)`` logits, or ``(V, N, C)`` of ``V`` views of each image, whose
            probabilities at the temperature are averaged (as :meth:`Calibration.judge`
            averages them).
        labels: ``(N,)`` class indices.

    Returns:
        ``T`` in ``[0.2, 20]`` (1.0 without rows; the bounds keep a small, perfectly
        separated validation split from making every probability 0 or 1).
    """
    if len(labels) == 0:
        return 1.0
    logits, labels = logits.detach().float().clone(), labels.long().clone()
    views = logits if logits.ndim == 3 else logits.unsqueeze(0)
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        # log of the views' mean probability; one view: the cross-entropy itself
        log_probs = (views / log_t.exp()).log_softmax(-1).logsumexp(0) - math.log(len(views))
        loss = nn.functional.nll_loss(log_probs, labels)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with torch.enable_grad():
        optimizer.step(closure)  # type: ignore[no-untyped-call]
    value = float(log_t.detach().exp())
    return min(max(value if math.isfinite(value) else 1.0, 0.2), 20.0)


class ReliabilityBin(TypedDict):
    """One confidence bin of a reliability diagram."""

    low: float
    """Lower edge (exclusive) of the bin's confidence range."""
    high: float
    """Upper edge (inclusive)."""
    confidence: float
    """Mean top-1 probability of the images in the bin (``nan`` when empty)."""
    accuracy: float
    """Share of them predicted right (``nan`` when empty)."""
    count: int
    """Images in the bin."""


def reliability_bins(
    probs: torch.Tensor, labels: torch.Tensor, bins: int = 15
) -> list[ReliabilityBin]:
    """Top-1 confidence against accuracy in equal-width confidence bins.

    Args:
        probs: ``(N, C)`` probabilities.
        labels: ``(N,)`` class indices.
        bins: Number of bins over ``[0, 1]``.

    Returns:
        One entry per bin, lowest confidence first.
    """
    confidence, predicted = probs.float().max(1)
    correct = (predicted == labels.long()).float()
    edges = torch.linspace(0, 1, bins + 1).tolist()
    out: list[ReliabilityBin] = []
    for lo, hi in itertools.pairwise(edges):
        inside = (confidence > lo) & (confidence <= hi)
        n = int(inside.sum())
        out.append(
            {
                "low": lo,
                "high": hi,
                "confidence": float(confidence[inside].mean()) if n else math.nan,
                "accuracy": float(correct[inside].mean()) if n else math.nan,
                "count": n,
            }
        )
    return out


def calibration_metrics(
    probs: torch.Tensor, labels: torch.Tensor, bins: int = 15
) -> dict[str, float]:
    """Expected calibration error, negative log-likelihood and Brier score.

    Args:
        probs: ``(N, C)`` probabilities.
        labels: ``(N,)`` class indices.
        bins: Equal-width confidence bins of the ECE.

    Returns:
        ``{"ece": ..., "nll": ..., "brier": ...}`` (``nan`` without rows).
    """
    n = len(labels)
    if n == 0:
        return {"ece": math.nan, "nll": math.nan, "brier": math.nan}
    probs, labels = probs.float(), labels.long()
    ece = sum(
        b["count"] / n * abs(b["confidence"] - b["accuracy"])
        for b in reliability_bins(probs, labels, bins)
        if b["count"]
    )
    nll = -probs[torch.arange(n), labels].clamp_min(1e-12).log().mean()
    onehot = nn.functional.one_hot(labels, probs.shape[1]).float()
    brier = ((probs - onehot) ** 2).sum(1).mean()
    return {"ece": float(ece), "nll": float(nll), "brier": float(brier)}


@torch.inference_mode()
def _embed_all(
    embed: Callable[[torch.Tensor], torch.Tensor],
    head: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, embeddings and labels of every row (on the CPU)."""
    logits, embeddings, labels = [], [], []
    for x, y in batches:
        features = embed(x).flatten(1)
        logits.append(head_logits(head, features))
        embeddings.append(features.float().cpu())
        labels.append(y.cpu())
    if not labels:
        return torch.zeros(0, 0), torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(embeddings), torch.cat(labels)


def fit_calibration(
    head: nn.Module,
    embed: Callable[[torch.Tensor], torch.Tensor],
    train: Iterable[tuple[torch.Tensor, torch.Tensor]],
    valid: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    score: NoveltyScore = "combined",
    target_recall: float = 0.95,
    calibrate: bool = True,
    views: Sequence[Iterable[tuple[torch.Tensor, torch.Tensor]]] = (),
) -> Calibration:
    """Learn the temperature, what the novelty score needs and the threshold after training.

    Args:
        head: The trained classifier.
        embed: Turns a row of the training loop into backbone features (the fine-tuned
            layers of ``freeze_unfreeze``, or nothing).
        train: ``(rows, labels)`` batches of training rows for the ``knn`` bank or the
            Gaussians: at most :data:`BANK_SIZE` of them (:func:`sample_rows` picks which).
        valid: ``(rows, labels)`` batches of the validation images calibrated on (at most
            :data:`CALIBRATION_SIZE` of the split:
            :func:`~petalnet.strategy.calibration_rows`).
        score: The novelty score to use.
        target_recall: Share of known validation images to keep below the threshold.
        calibrate: Fit the temperature (else it stays 1).
        views: With test-time augmentation, ``(rows, labels)`` batches of each further
            view of the validation images (same images, same order): the temperature, the
            normalisation and the threshold are then fitted on the views' average, the
            answers ``evaluate`` and ``predict`` give.

    Returns:
        The calibration; without validation rows: ``T = 1`` and no threshold.
    """
    # under torchrun each rank embeds its share; the embeddings (a bounded sample, and
    # the validation split) are gathered so that every rank calibrates alike
    _, rows, row_labels = (distributed.gather_tensor(t) for t in _embed_all(embed, head, train))
    logits, embeddings, labels = (
        distributed.gather_tensor(t) for t in _embed_all(embed, head, valid)
    )
    seen = [(logits, embeddings)]
    for view in views:
        more, more_embeddings, _ = (
            distributed.gather_tensor(t) for t in _embed_all(embed, head, view)
        )
        seen.append((more, more_embeddings))
    if len(labels) and any(v[0].shape != logits.shape for v in seen):
        raise ValueError("every view must have the rows of the same validation images")
    all_logits = torch.stack([v[0] for v in seen]) if len(labels) else logits[None]
    all_embeddings = torch.stack([v[1] for v in seen]) if len(labels) else embeddings[None]
    calibration = Calibration(score=score, target_recall=target_recall)
    if calibrate:
        calibration.temperature = fit_temperature(all_logits, labels)
    calibration.fit_scores(rows, row_labels, all_logits, all_embeddings)
    if len(labels) == 0:
        return calibration
    raw = calibration_metrics(all_logits.softmax(-1).mean(0), labels)
    judged = calibration.judge(all_logits, all_embeddings)  # as evaluate and predict judge
    calibration.metrics = {
        **calibration_metrics(judged.log_probs.exp(), labels),
        **{f"{k}_raw": v for k, v in raw.items()},
    }
    scores = judged.novelty
    calibration.threshold = float(torch.quantile(scores, target_recall))
    return calibration
