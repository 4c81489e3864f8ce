"""Saying "I don't know": calibrated probabilities, a novelty score and the unknown threshold.

After training, :func:`fit_calibration` looks at the validation split (never at the rows the
head was trained on) and learns three things, kept in the checkpoint as a
:class:`Calibration`:

- a **temperature** ``T``: probabilities are ``softmax(logits / T)``, with ``T`` the value
  that minimises the validation negative log-likelihood (Guo et al. 2017). It moves
  confidence, never the ranking of the classes.
- a **novelty score** per image, higher meaning less like any known class:
  ``"knn"`` (default: cosine distance of the backbone features to their ``k``-th nearest
  neighbour among stored training features), ``"energy"`` (``-T logsumexp(logits / T)``),
  ``"max_logit"`` (minus the largest logit) or ``"msp"`` (one minus the largest calibrated
  probability).
- a **threshold** on that score: the ``target_recall`` quantile of the validation images'
  scores, so about that share of photos of known flowers stays below it; above it, a photo
  is reported as unknown.

The head is :func:`~petalnet.head.build_head`'s ``Sequential`` ending in ``LogSoftmax``; its
input is the backbone features (the embedding the ``knn`` score uses), the input of its
last module the logits.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypedDict, get_args

import torch
from torch import nn

from petalnet._types import NoveltyScore

__all__ = [
    "NOVELTY_SCORES",
    "Calibration",
    "HeadOutput",
    "NoveltyScore",
    "ReliabilityBin",
    "calibration_metrics",
    "fit_calibration",
    "fit_temperature",
    "novelty_scores",
    "reliability_bins",
]

NOVELTY_SCORES: tuple[NoveltyScore, ...] = get_args(NoveltyScore)
BANK_SIZE = 4096
"""Training feature rows the ``knn`` score keeps (float16: 10 MB for 1280 features)."""


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
        threshold: Scores above it are unknown; ``None``: never unknown (no validation split).
        target_recall: Share of known validation images the threshold keeps below it.
        metrics: Validation ``ece``/``nll``/``brier`` before and after scaling (``*_raw``).
    """

    temperature: float = 1.0
    score: NoveltyScore = "knn"
    bank: torch.Tensor | None = None
    k: int = 10
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
        logits = torch.stack([head_logits(head, v.to(device)) for v in stacked])
        return self.judge(logits, stacked.float())

    def judge(self, logits: torch.Tensor, embeddings: torch.Tensor) -> HeadOutput:
        """Calibrated log-probabilities and novelty of ``(V, N, C)`` logits of ``V`` views."""
        probs = (logits / self.temperature).softmax(-1).mean(0)
        novelty = novelty_scores(
            logits, embeddings, self.score, temperature=self.temperature, bank=self.bank, k=self.k
        )
        unknown = (
            novelty > self.threshold
            if self.threshold is not None
            else torch.zeros(len(novelty), dtype=torch.bool)
        )
        return HeadOutput(probs.clamp_min(1e-30).log(), novelty, unknown)

    def to_payload(self) -> dict[str, Any]:
        """Tensors and plain values only, for a ``weights_only`` checkpoint."""
        return {
            "temperature": self.temperature,
            "score": self.score,
            "bank": self.bank,
            "k": self.k,
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

    Returns:
        ``(N,)`` float32 scores.

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
    raise ValueError(f"score must be one of {', '.join(NOVELTY_SCORES)}; got {score!r}.")


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels``.

    Args:
        logits: ``(N, C)`` logits.
        labels: ``(N,)`` class indices.

    Returns:
        ``T`` in ``[0.2, 20]`` (1.0 without rows; the bounds keep a small, perfectly
        separated validation split from making every probability 0 or 1).
    """
    if len(labels) == 0:
        return 1.0
    logits, labels = logits.detach().float().clone(), labels.long().clone()
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(logits / log_t.exp(), labels)
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
    score: NoveltyScore = "knn",
    target_recall: float = 0.95,
) -> Calibration:
    """Learn the temperature, the ``knn`` bank and the threshold after training.

    Args:
        head: The trained classifier.
        embed: Turns a row of the training loop into backbone features (the fine-tuned
            layers of ``freeze_unfreeze``, or nothing).
        train: ``(rows, labels)`` batches of training rows for the ``knn`` bank (at most
            :data:`BANK_SIZE` are kept, spread over the batches).
        valid: ``(rows, labels)`` batches of the validation split.
        score: The novelty score to use.
        target_recall: Share of known validation images to keep below the threshold.

    Returns:
        The calibration; without validation rows: ``T = 1`` and no threshold.
    """
    _, rows, _ = _embed_all(embed, head, train)
    if len(rows) > BANK_SIZE:
        rows = rows[torch.linspace(0, len(rows) - 1, BANK_SIZE).long()]
    bank = nn.functional.normalize(rows, dim=-1).half() if len(rows) else None
    logits, embeddings, labels = _embed_all(embed, head, valid)
    calibration = Calibration(score=score, bank=bank, target_recall=target_recall)
    if len(labels) == 0:
        return calibration
    calibration.temperature = fit_temperature(logits, labels)
    raw = calibration_metrics(logits.softmax(-1), labels)
    scaled = calibration_metrics((logits / calibration.temperature).softmax(-1), labels)
    calibration.metrics = {**scaled, **{f"{k}_raw": v for k, v in raw.items()}}
    scores = calibration.judge(logits.unsqueeze(0), embeddings.unsqueeze(0)).novelty
    calibration.threshold = float(torch.quantile(scores, target_recall))
    return calibration
