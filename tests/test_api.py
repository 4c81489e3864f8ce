"""The public surface: exactly the exported names, typed, documented."""

from __future__ import annotations

import inspect
from pathlib import Path

import petalnet

EXPECTED = {
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
}


def test_all_is_exactly_the_public_api_and_sorted():
    assert set(petalnet.__all__) == EXPECTED
    assert petalnet.__all__ == sorted(petalnet.__all__)
    public = {n for n in vars(petalnet) if not n.startswith("_")}
    # subpackages/modules are reachable but not part of __all__
    modules = {n for n in public if inspect.ismodule(getattr(petalnet, n))}
    assert public - modules == EXPECTED - {"__version__"}


def test_package_is_typed():
    assert (Path(petalnet.__file__).parent / "py.typed").is_file()


def test_public_callables_have_docstrings_with_sections():
    for name in petalnet.__all__:
        obj = getattr(petalnet, name)
        if name.startswith("__"):
            continue
        assert inspect.getdoc(obj), name
    for method in ("fit", "evaluate", "predict", "save", "load"):
        doc = inspect.getdoc(getattr(petalnet.FlowerClassifier, method))
        assert "Args:" in doc and "Returns:" in doc and "Raises:" in doc, method


def test_errors_share_one_base():
    for name in petalnet.__all__:
        obj = getattr(petalnet, name)
        if inspect.isclass(obj) and name.endswith("Error"):
            assert issubclass(obj, petalnet.PetalnetError)
