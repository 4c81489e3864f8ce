"""Fine-tuning strategies: which part of the backbone trains, and what is computed once.

``"freeze"`` trains the head on cached features. ``"freeze_unfreeze"`` trains the head
first, then the last blocks of the backbone with it: the frozen front of the backbone runs
once per image (its output is cached like features are), so only the unfrozen blocks run
every epoch, which is what makes partial fine-tuning affordable on a CPU. ``"full"`` (or
unfreezing every block) trains the whole backbone from decoded, freshly augmented images.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from petalnet.backbones.base import FeatureExtractor
from petalnet.errors import PetalnetError

__all__ = ["STRATEGIES", "TrainingPlan", "plan_training"]

STRATEGIES = ("freeze", "freeze_unfreeze", "full")
"""The names ``FlowerClassifier(strategy=...)`` accepts."""


@dataclass
class TrainingPlan:
    """How one ``fit`` splits the work.

    Attributes:
        front: Runs once per image (cached) to make the rows training learns from; ``None``
            when images are decoded every epoch because training reaches the first layer.
        back: Backbone layers trained with the head, mapping ``front``'s rows (or images)
            to features; ``None`` when the whole backbone stays frozen.
        freeze_epochs: Epochs at the start during which ``back`` stays frozen.
    """

    front: FeatureExtractor | None
    back: nn.Module | None
    freeze_epochs: int


def plan_training(
    backbone: FeatureExtractor,
    strategy: str,
    *,
    unfreeze_blocks: int | None,
    freeze_epochs: int | None,
    epochs: int,
    name: str,
) -> TrainingPlan:
    """Decide what runs once and what trains, for ``strategy`` on ``backbone``.

    Args:
        backbone: The feature extractor (its blocks: :attr:`FeatureExtractor.num_blocks`).
        strategy: One of :data:`STRATEGIES`.
        unfreeze_blocks: For ``"freeze_unfreeze"``: how many blocks, from the end, train
            after the head-only epochs; ``None`` (or at least the number of blocks) for all.
        freeze_epochs: Head-only epochs; ``None`` means half of ``epochs`` for
            ``"freeze_unfreeze"`` and 0 for ``"full"``.
        epochs: Epochs of the whole run.
        name: The backbone's registered name, for messages.

    Returns:
        The plan.

    Raises:
        PetalnetError: Unknown strategy, or blocks asked of a backbone that declares none.
    """
    if strategy not in STRATEGIES:
        raise PetalnetError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}.")
    if strategy == "freeze":
        return TrainingPlan(front=backbone, back=None, freeze_epochs=0)
    if strategy == "full":
        return TrainingPlan(front=None, back=backbone, freeze_epochs=int(freeze_epochs or 0))
    head_only = epochs // 2 if freeze_epochs is None else int(freeze_epochs)
    total = backbone.num_blocks
    if unfreeze_blocks is None or (total and unfreeze_blocks >= total):
        return TrainingPlan(front=None, back=backbone, freeze_epochs=head_only)
    if not total:
        raise PetalnetError(
            f"Backbone {name!r} declares no blocks (its body is not an nn.Sequential of "
            "blocks), so it cannot unfreeze some of them: pass unfreeze_blocks=None to "
            "fine-tune it whole, or use strategy='freeze'."
        )
    front, back = backbone.split(int(unfreeze_blocks))
    return TrainingPlan(front=front, back=back, freeze_epochs=head_only)
