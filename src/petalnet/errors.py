"""Exceptions and warnings raised by petalnet.

Every error petalnet raises on purpose derives from :class:`PetalnetError`, so a caller
(or the command line) can catch one type and show its message, which always says what
went wrong and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "BackboneNotFoundError",
    "CheckpointError",
    "DataError",
    "ImageReadError",
    "NotFittedError",
    "PetalnetError",
    "PetalnetWarning",
    "WeightsUnavailableError",
]


class PetalnetError(Exception):
    """Base class of every error petalnet raises on purpose."""


class NotFittedError(PetalnetError, ValueError, AttributeError):
    """A method that needs a trained model was called before :meth:`fit` or :meth:`load`.

    It also derives from :class:`ValueError` and :class:`AttributeError`, like
    scikit-learn's exception of the same name.
    """


class DataError(PetalnetError, ValueError):
    """A data folder or category-name file cannot be used as given."""


class ImageReadError(DataError):
    """One image file cannot be read; the message names the file."""


class NotAnImageError(ImageReadError):
    """The file is no image format Pillow knows (an HTML page saved as .jpg, say)."""


class ImageTooLargeError(ImageReadError):
    """The image has more pixels than :data:`petalnet.images.MAX_IMAGE_PIXELS` (a bomb?)."""


class BackboneNotFoundError(PetalnetError, KeyError):
    """No backbone is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsUnavailableError(PetalnetError, OSError):
    """Pretrained weights could not be found locally nor downloaded."""


class ExportOptionsError(PetalnetError, ValueError):
    """The export options asked for cannot be combined (an unknown format, bfloat16 ONNX)."""


class CheckpointError(PetalnetError, ValueError):
    """A checkpoint file is missing, damaged, unsafe or not a petalnet checkpoint."""


class PetalnetWarning(UserWarning):
    """Warnings petalnet emits (a broken backbone plugin, a skipped image, ...)."""
