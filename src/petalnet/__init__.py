"""petalnet: train and serve flower-photo classifiers by transfer learning.

>>> from petalnet import FlowerClassifier
>>> clf = FlowerClassifier(backbone="efficientnet_lite0").fit("flowers/")  # doctest: +SKIP
>>> clf.predict("rose.jpg", topk=5)  # doctest: +SKIP
"""

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from petalnet._version import __version__
from petalnet.errors import (
    BackboneNotFoundError,
    CheckpointError,
    DataError,
    ImageReadError,
    NotFittedError,
    PetalnetError,
    PetalnetWarning,
    WeightsUnavailableError,
)

if _TYPE_CHECKING:  # what the names below are; at run time they load on first use
    from petalnet import plot as plot
    from petalnet.backbones import (
        FeatureExtractor,
        build_backbone,
        get_backbone,
        list_backbones,
        register_backbone,
    )
    from petalnet.callbacks import Callback, EarlyStopping, EpochRecord, TrainingState
    from petalnet.classifier import FlowerClassifier
    from petalnet.preprocessing import Preprocessing
    from petalnet.results import EvaluationReport, ImagePrediction, Prediction, TopK

# name -> the module that defines it. Loading torch takes seconds, so `import petalnet`
# (and `petalnet --help`) does not: the first use of one of these names does.
_LAZY = {
    "plot": "petalnet.plot",
    **dict.fromkeys(
        ["FeatureExtractor", "build_backbone", "get_backbone", "list_backbones"],
        "petalnet.backbones",
    ),
    "register_backbone": "petalnet.backbones",
    **dict.fromkeys(
        ["Callback", "EarlyStopping", "EpochRecord", "TrainingState"], "petalnet.callbacks"
    ),
    "FlowerClassifier": "petalnet.classifier",
    "Preprocessing": "petalnet.preprocessing",
    **dict.fromkeys(
        ["EvaluationReport", "ImagePrediction", "Prediction", "TopK"], "petalnet.results"
    ),
}


def __getattr__(name: str) -> _Any:
    """Load a public name from its module on first use (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'petalnet' has no attribute {name!r}")
    module = _importlib.import_module(_LAZY[name])
    value = module if name == "plot" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "BackboneNotFoundError",
    "Callback",
    "CheckpointError",
    "DataError",
    "EarlyStopping",
    "EpochRecord",
    "EvaluationReport",
    "FeatureExtractor",
    "FlowerClassifier",
    "ImagePrediction",
    "ImageReadError",
    "NotFittedError",
    "PetalnetError",
    "PetalnetWarning",
    "Prediction",
    "Preprocessing",
    "TopK",
    "TrainingState",
    "WeightsUnavailableError",
    "__version__",
    "build_backbone",
    "get_backbone",
    "list_backbones",
    "register_backbone",
]
