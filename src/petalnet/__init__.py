"""petalnet: train and serve flower-photo classifiers by transfer learning.

>>> from petalnet import FlowerClassifier
>>> clf = FlowerClassifier(backbone="efficientnet_lite0").fit("flowers/")  # doctest: +SKIP
>>> clf.predict("rose.jpg", topk=5)  # doctest: +SKIP
"""

from petalnet import plot as plot  # the module; matplotlib loads only when drawing
from petalnet._version import __version__
from petalnet.backbones import (
    FeatureExtractor,
    build_backbone,
    get_backbone,
    list_backbones,
    register_backbone,
)
from petalnet.callbacks import Callback, EarlyStopping, EpochRecord, TrainingState
from petalnet.classifier import FlowerClassifier
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
from petalnet.preprocessing import Preprocessing
from petalnet.results import EvaluationReport, ImagePrediction, Prediction

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
    "TrainingState",
    "WeightsUnavailableError",
    "__version__",
    "build_backbone",
    "get_backbone",
    "list_backbones",
    "register_backbone",
]
