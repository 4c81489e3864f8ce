"""`petalnet serve`: the ASGI app through Starlette's in-process test client."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from conftest import draw_flower
from petalnet import FlowerClassifier, NotFittedError
from petalnet.cli import main

pytest.importorskip("starlette")
pytest.importorskip("multipart")  # python-multipart
from starlette.testclient import TestClient

from petalnet import images
from petalnet.serve import MAX_TOPK, create_app


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def client(fitted):
    with TestClient(create_app(fitted, max_upload_bytes=200_000)) as c:
        yield c


def test_health_and_model(client, fitted):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/model").json()
    assert info["backbone"] == "tiny_test" and info["classes"] == fitted.classes_
    assert info["names"][0].startswith("flower number")
    assert info["calibration"]["temperature"] == fitted.model_.calibration.temperature
    assert 0 <= info["valid_accuracy"] <= 1


def test_predict_answers_like_the_classifier(client, fitted):
    photo = draw_flower("7", seed=99)
    response = client.post("/predict?topk=3", files={"file": ("rose.png", _png(photo))})
    assert response.status_code == 200
    body = response.json()
    expected = fitted.predict(photo, topk=3)
    assert [p["class_id"] for p in body["predictions"]] == [p.class_id for p in expected]
    got = [p["probability"] for p in body["predictions"]]
    np.testing.assert_allclose(got, [p.probability for p in expected], rtol=1e-5)
    assert body["predictions"][0]["label"] == expected[0].label
    assert body["unknown"] is expected.unknown and isinstance(body["novelty"], float)
    assert (
        len(client.post("/predict", files={"file": ("a.png", _png(photo))}).json()["predictions"])
        == 5
    )


@pytest.mark.parametrize(
    ("files", "query", "status", "words"),
    [
        ({"file": ("notes.txt", b"not an image at all")}, "", 415, "not a readable image"),
        ({"file": ("cut.png", None)}, "", 400, "not a readable image"),  # truncated
        ({"other": ("a.png", None)}, "", 400, "field 'file'"),
        ({"file": ("a.png", None)}, "?topk=0", 400, "topk"),
        ({"file": ("a.png", None)}, f"?topk={MAX_TOPK + 1}", 400, "topk"),
        ({"file": ("a.png", None)}, "?topk=three", 400, "topk"),
    ],
)
def test_bad_requests_are_4xx_with_a_message(client, files, query, status, words):
    png = _png(draw_flower("1", seed=5))
    filled = {
        k: (name, data if data is not None else (png[: len(png) // 2] if "cut" in name else png))
        for k, (name, data) in files.items()
    }
    response = client.post(f"/predict{query}", files=filled)
    assert response.status_code == status
    assert words in response.json()["error"]


def test_oversized_uploads_get_413_and_bombs_are_refused(client, monkeypatch):
    big = client.post("/predict", files={"file": ("big.bin", b"x" * 300_000)})
    assert big.status_code == 413 and "larger than" in big.json()["error"]
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100)  # a 48x40 photo is now a "bomb"
    bomb = client.post("/predict", files={"file": ("bomb.png", _png(draw_flower("1", seed=5)))})
    assert bomb.status_code == 413 and "decompression bomb" in bomb.json()["error"]
    assert client.get("/health").status_code == 200  # still serving


def test_page_is_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    html = page.text
    assert 'type="file"' in html and "predict?topk=" in html
    assert "http://" not in html and "https://" not in html  # no CDN, no web font


def test_concurrent_requests_all_succeed(client):
    png = _png(draw_flower("3", seed=1))
    codes: list[int] = []

    def ask() -> None:
        codes.append(client.post("/predict", files={"file": ("a.png", png)}).status_code)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 8


def test_unfitted_classifier_and_cli_errors(fitted, tmp_path, capsys):
    with pytest.raises(NotFittedError):
        create_app(FlowerClassifier())
    ckpt = fitted.save(tmp_path / "m.pt")
    assert main(["serve", str(ckpt), "--port", "0"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "missing.pt")]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_a_refitted_model_reports_its_validated_runs_accuracy_and_views(single_folder):
    from petalnet import FlowerClassifier
    from petalnet.serve import model_info

    clf = FlowerClassifier(
        "tiny_test", weights=None, epochs=2, monitor="last", refit=True, tta="crops", verbose=0
    ).fit(single_folder)
    info = model_info(clf)
    assert info["tta"] == "crops"
    assert info["valid_accuracy"] == pytest.approx(clf.selection_history_[-1]["valid_accuracy"])
