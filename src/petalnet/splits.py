"""How ``fit`` carves a validation split from a folder without ``valid/``: the one policy.

``split="grouped"`` (the default) keeps each group of copies and other shots of one plant on
one side, so the split that picks epochs and calibrates never scores a near-copy of a
training photo; the groups are the data doctor's
(:func:`~petalnet.deep_check.near_duplicate_groups`).
``split="stratified"`` holds out images per class at random.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from petalnet.data import GroupsOf, Sample
from petalnet.deep_check import GROUPING_BACKBONE, near_duplicate_groups
from petalnet.errors import BackboneNotFoundError, PetalnetWarning, WeightsUnavailableError
from petalnet.params import ClassifierParams

__all__ = ["split_groups"]


def split_groups(params: ClassifierParams) -> GroupsOf | None:
    """The grouping ``fit`` hands to the split (``None``: per class at random).

    Args:
        params: The estimator's parameters (``split``, ``cache``, ``cache_dir``, ``device``,
            ``verbose``).

    Returns:
        A function from samples to group ids, or ``None`` for ``split="stratified"``.
    """
    if params.split != "grouped":
        return None

    def groups(samples: Sequence[Sample]) -> list[int]:
        try:
            return near_duplicate_groups(
                list(samples),
                cache_dir=params.cache_dir,
                use_cache=params.cache,
                device=str(params.device),
                verbose=int(params.verbose),
            )
        except (WeightsUnavailableError, BackboneNotFoundError) as exc:
            warnings.warn(
                f"split='grouped' finds copies and siblings with {GROUPING_BACKBONE}, which is "
                f"not available here ({exc}); each image is its own group, so the validation "
                "split is stratified at random. pip install 'petalnet[lite]', or pass "
                "split='stratified' to say so.",
                PetalnetWarning,
                stacklevel=2,
            )
            return list(range(len(samples)))

    return groups
