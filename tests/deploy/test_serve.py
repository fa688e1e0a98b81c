"""`hdkd serve`'s API through FastAPI's TestClient: predictions as `hdkd predict` makes them, hostile uploads
refused with a JSON message while the server keeps serving, the OpenAPI schema, the command's options."""

import argparse
import asyncio
import base64
import importlib.util
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import timm
from fastapi.testclient import TestClient
from PIL import Image, ImageFile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from starlette.requests import Request

import hdkd.models  # noqa: F401 (registers the hdkd models with timm)
from hdkd.commands import serve as serve_command
from hdkd.deploy import serve
from hdkd.deploy.serve import create_app, read_limited_body, sniff_type
from hdkd.errors import HDKDError
from hdkd.evaluation.inference import Classifier, TorchClassifier, fit_array, read_model_image
from hdkd.models import save_checkpoint

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
METRICS = {"accuracy": 0.9123, "macro_f1": 0.9011}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = timm.create_model("hdkd", num_classes=4, img_size=32, in_chans=3).eval()
    return save_checkpoint(
        model,
        tmp_path_factory.mktemp("model") / "tiny.safetensors",
        "hdkd",
        {"num_classes": 4, "img_size": 32, "in_chans": 3},
        extra={
            "class_names": list(CLASSES),
            "img_size": 32,
            "in_chans": 3,
            "role": "hdkd",
            "temperature": 2.0,
            "metrics": METRICS,
        },
    )


@pytest.fixture(scope="module")
def classifier(checkpoint):
    return TorchClassifier.from_checkpoint(checkpoint)


def png_of(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image if image.shape[-1] == 3 else image[..., 0]).save(buffer, format="PNG")
    return buffer.getvalue()


def explain_as_png(image: np.ndarray) -> bytes:
    """A stand-in explainer: the image it is given, as a PNG (so the test sees what the explainer was given)."""
    return png_of(image)


@pytest.fixture(scope="module")
def client(classifier):
    with TestClient(create_app(classifier, explain_as_png, max_upload_bytes=200_000)) as c:
        yield c


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """A colour JPEG, a grey PNG and a 16-bit PNG of uneven sizes, as files (the predict path reads files)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "colour.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (40, 33), dtype=np.uint8)).save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 65536, (64, 48), dtype=np.uint16)).save(folder / "deep.png")
    return sorted(folder.iterdir())


def post(client, name: str, data: bytes):
    return client.post("/api/predict", files={"file": (name, data, "application/octet-stream")})


def assert_still_serving(client, image_files):
    response = post(client, image_files[0].name, image_files[0].read_bytes())
    assert response.status_code == 200, response.text
    assert response.json()["class"] in CLASSES


def test_predictions_are_those_of_the_predict_path(client, classifier, image_files):
    for path in image_files:
        response = post(client, path.name, path.read_bytes())
        assert response.status_code == 200, response.text
        body = response.json()
        model_image = read_model_image(path, classifier.info)
        expected = classifier.probabilities([model_image])[0]  # calibrated (temperature 2) as `hdkd predict`
        assert list(body["probabilities"]) == list(CLASSES)
        np.testing.assert_allclose([body["probabilities"][c] for c in CLASSES], expected, rtol=0, atol=1e-6)
        assert body["class"] == CLASSES[int(np.argmax(expected))]
        assert body["filename"] == path.name
        assert body["overlay"].startswith("data:image/png;base64,")
        overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["overlay"].split(",", 1)[1]))))
        np.testing.assert_array_equal(overlay, model_image)  # the explainer got the image at the model's size


def test_temperature_is_applied(client, classifier, image_files):
    body = post(client, image_files[1].name, image_files[1].read_bytes()).json()
    raw = classifier.probabilities([read_model_image(image_files[1], classifier.info)], calibrated=False)[0]
    assert not np.allclose([body["probabilities"][c] for c in CLASSES], raw, atol=1e-4)


def test_model_and_health(client):
    model = client.get("/api/model").json()
    assert model["classes"] == list(CLASSES) and model["img_size"] == 32 and model["in_chans"] == 3
    assert model["temperature"] == 2.0 and model["metrics"] == METRICS and model["model_name"] == "hdkd"
    assert model["explanations"] is True and model["max_upload_bytes"] == 200_000
    health = client.get("/api/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_openapi_documents_the_api(client):
    schema = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/model", "/api/health"} <= set(schema["paths"])
    predict = schema["paths"]["/api/predict"]["post"]
    upload = predict["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["required"] == ["file"] and upload["properties"]["file"]["format"] == "binary"
    assert {"200", "400", "413", "415", "422"} <= set(predict["responses"])
    response = schema["components"]["schemas"]["PredictResponse"]
    assert {"class", "probabilities", "overlay", "filename"} <= set(response["properties"])
    assert {"classes", "img_size", "metrics", "temperature"} <= set(
        schema["components"]["schemas"]["ModelResponse"]["properties"]
    )


def test_page_and_its_assets_come_from_the_app(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="predicted-class"' in page.text and 'id="error"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("static/app.js", "static/app.css"):
        assert client.get("/" + asset).status_code == 200
        assert asset in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN, no external fonts
    script = client.get("/static/app.js").text
    assert "innerHTML" not in script and "textContent" in script


def png_with_size(width: int, height: int) -> bytes:
    """A valid 1 x 1 PNG whose header claims width x height (CRC fixed): a decompression bomb's header."""
    data = bytearray(png_of(np.zeros((1, 1, 3), dtype=np.uint8)))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def hostile_uploads(image_files):
    jpeg = image_files[0].read_bytes()
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, format="GIF")
    return {
        "text named .jpg": ("notes.jpg", b"just some text, not an image\n" * 10, 415, "not a JPEG, PNG or DICOM"),
        "GIF": ("image.gif", gif.getvalue(), 415, "not a JPEG, PNG or DICOM"),
        "empty": ("empty.png", b"", 415, "not a JPEG, PNG or DICOM"),
        "truncated JPEG": ("cut.jpg", jpeg[: len(jpeg) // 2], 422, "corrupt or unreadable JPEG"),
        "PNG signature then junk": ("junk.png", b"\x89PNG\r\n\x1a\n" + b"\x00junk" * 50, 422, "corrupt"),
        "decompression bomb": ("bomb.png", png_with_size(100_000, 100_000), 413, "decompression bomb"),
        "over the size limit": ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(300_000), 413, "over the limit"),
        "DICOM magic, junk header": ("scan.dcm", bytes(128) + b"DICM" + b"\xff" * 64, (415, 422), "DICOM"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "text named .jpg",
        "GIF",
        "empty",
        "truncated JPEG",
        "PNG signature then junk",
        "decompression bomb",
        "over the size limit",
        "DICOM magic, junk header",
    ],
)
def test_hostile_upload_is_a_4xx_json_message_and_the_server_keeps_serving(client, image_files, case):
    name, data, status, message = hostile_uploads(image_files)[case]
    response = post(client, name, data)
    assert response.status_code in (status if isinstance(status, tuple) else (status,)), response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert isinstance(detail, str) and message in detail
    assert_still_serving(client, image_files)


def test_malformed_requests(client, image_files):
    cases = [
        (dict(json={"file": "x"}), 415, "multipart/form-data"),
        (dict(data={"other": "x"}, files={"other_file": ("a.png", b"x")}), 400, "exactly one `file`"),
        (dict(files=[("file", ("a.png", b"1")), ("file", ("b.png", b"2"))]), 400, "exactly one `file`"),
        (
            dict(content=b"--x\r\nnot a multipart body", headers={"content-type": "multipart/form-data; boundary=y"}),
            400,
            "malformed multipart",
        ),
        (
            dict(
                content=b"x", headers={"content-type": "multipart/form-data; boundary=x", "content-length": str(10**9)}
            ),
            413,
            "over the limit",
        ),
    ]
    for kwargs, status, message in cases:
        response = client.post("/api/predict", **kwargs)
        assert response.status_code == status, (kwargs, response.text)
        assert message in response.json()["detail"]
        assert_still_serving(client, image_files)


def test_hostile_file_name_is_returned_as_text(client, image_files):
    name = "<img src=x onerror=alert(1)>é.png"
    response = post(client, name, image_files[1].read_bytes())
    assert response.status_code == 200 and response.json()["filename"] == name


def test_pixel_limit_checked_before_decoding(classifier, image_files, monkeypatch):
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self))
    with TestClient(create_app(classifier, max_image_pixels=1000)) as small:
        response = post(small, image_files[0].name, image_files[0].read_bytes())  # 70 x 50 = 3500 pixels
    assert response.status_code == 413 and "70 x 50 pixels" in response.json()["detail"]
    assert not decoded


def test_upload_limit_stops_reading_the_body():
    """The body is read chunk by chunk and refused at the limit, not read whole and checked afterwards."""
    chunks, pulled = [b"x" * 1000] * 50, []

    async def receive():
        pulled.append(1)
        return {"type": "http.request", "body": chunks[len(pulled) - 1], "more_body": len(pulled) < len(chunks)}

    request = Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)
    with pytest.raises(serve.HTTPException) as error:
        asyncio.run(read_limited_body(request, 5_500))
    assert error.value.status_code == 413 and len(pulled) == 6


def test_sniff_type_reads_content_not_names():
    assert sniff_type(b"\xff\xd8\xff\xe0rest") == "jpeg"
    assert sniff_type(b"\x89PNG\r\n\x1a\nrest") == "png"
    assert sniff_type(bytes(128) + b"DICM") == "dicom"
    assert sniff_type(b"GIF89a") is None and sniff_type(b"") is None and sniff_type(bytes(131) + b"DICM") is None


def test_nothing_written_to_disk(client, classifier, image_files, tmp_path, monkeypatch):
    """No spooled uploads or temporary files, even for an upload over Starlette's 1 MB spooling threshold."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    big = png_of(rng.integers(0, 256, (700, 700, 3), dtype=np.uint8))
    assert len(big) > 1_000_000
    with TestClient(create_app(classifier, max_upload_bytes=5_000_000)) as c:
        assert post(c, "big.png", big).status_code == 200
    assert post(client, "cut.jpg", image_files[0].read_bytes()[:100]).status_code == 422
    assert list(tmp_path.iterdir()) == []


def test_failed_explanation_keeps_the_prediction(classifier, image_files):
    def broken(image):
        raise RuntimeError("no map")

    with TestClient(create_app(classifier, broken)) as c:
        body = post(c, image_files[0].name, image_files[0].read_bytes()).json()
    assert body["class"] in CLASSES and body["overlay"] is None


def test_without_explainer_no_overlay(classifier, image_files):
    with TestClient(create_app(classifier)) as c:
        assert c.get("/api/model").json()["explanations"] is False
        assert post(c, image_files[0].name, image_files[0].read_bytes()).json()["overlay"] is None


def test_only_allowed_host_names(classifier):
    with TestClient(
        create_app(classifier, allowed_hosts=["127.0.0.1", "localhost"]), base_url="http://evil.example"
    ) as c:
        assert c.get("/api/health").status_code == 400
    with TestClient(
        create_app(classifier, allowed_hosts=["127.0.0.1", "localhost"]), base_url="http://127.0.0.1:8000"
    ) as c:
        assert c.get("/api/health").status_code == 200


def test_dicom_upload_predicts_the_first_frame(client, classifier, tmp_path, monkeypatch):
    from pydicom import data as pydicom_data

    from hdkd.data import dicom

    path = Path(pydicom_data.get_testdata_file("CT_small.dcm"))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    response = post(client, "ct.dcm", path.read_bytes())
    assert response.status_code == 200, response.text
    expected = classifier.probabilities([fit_array(dicom.read_dicom_frames(path)[0], classifier.info)])[0]
    np.testing.assert_allclose([response.json()["probabilities"][c] for c in CLASSES], expected, atol=1e-6)
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone


def dicom_bytes(rows: int, columns: int, pixels: bytes) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_dicom_goes_through_a_temporary_folder(client, classifier, image_files, tmp_path, monkeypatch):
    """With a stand-in for `read_dicom_frames`: the upload is a file in a temporary folder removed afterwards,
    its first frame is predicted, and the reader's errors come back with the upload's name, not the temp path."""
    frame, seen = np.arange(40 * 30, dtype=np.uint8).reshape(40, 30), []

    def reader(path):
        seen.append(Path(path))
        assert Path(path).read_bytes()[128:132] == b"DICM" and Path(path).parent.parent == tmp_path
        return [frame, np.zeros_like(frame)]

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr(serve, "read_dicom_frames", reader)
    response = post(client, "scan.dcm", dicom_bytes(40, 30, frame.tobytes()))
    assert response.status_code == 200, response.text
    expected = classifier.probabilities([fit_array(frame, classifier.info)])[0]
    np.testing.assert_allclose([response.json()["probabilities"][c] for c in CLASSES], expected, atol=1e-6)
    assert seen and not seen[0].parent.exists() and list(tmp_path.iterdir()) == []

    bomb = post(client, "bomb.dcm", dicom_bytes(60_000, 60_000, bytes(16)))
    assert bomb.status_code == 413 and "60000 x 60000 pixels" in bomb.json()["detail"] and len(seen) == 1

    def failing_reader(path):
        raise HDKDError(f"{path}: compressed transfer syntax needs pylibjpeg")

    monkeypatch.setattr(serve, "read_dicom_frames", failing_reader)
    failed = post(client, "scan.dcm", dicom_bytes(40, 30, frame.tobytes()))
    assert failed.status_code == 422 and failed.json()["detail"].startswith("scan.dcm: unreadable DICOM (scan.dcm:")
    assert str(tmp_path) not in failed.json()["detail"]
    assert_still_serving(client, image_files)


class FixedClassifier(Classifier):
    """Not a PyTorch model (as an ONNX one): no explainer is built for it."""

    def __init__(self, info):
        self.info = info

    def logits(self, inputs):
        return np.zeros((len(inputs), self.info.num_classes), dtype=np.float32)


def test_no_explainer_for_models_other_than_torch(classifier):
    assert serve.build_explainer(FixedClassifier(classifier.info)) is None


def parse(argv):
    parser = argparse.ArgumentParser()
    serve_command.register(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_command_defaults_and_bad_options(checkpoint, tmp_path):
    args = parse([str(checkpoint)])
    assert (args.host, args.port, args.max_upload_mb, args.no_explain) == ("127.0.0.1", 8000, 20.0, False)
    assert args.func is serve_command.run
    for argv, message in [
        ([str(checkpoint), "--port", "70000"], "--port 70000"),
        ([str(checkpoint), "--max-upload-mb", "0"], "--max-upload-mb 0"),
        ([str(tmp_path / "missing.onnx")], "missing.onnx"),
        ([str(tmp_path / "model.pt")], "model.pt"),
    ]:
        with pytest.raises(HDKDError, match=message.replace(".", r"\.")):
            serve_command.run(parse(argv))


def test_command_busy_port_is_a_clear_error(checkpoint):
    with serve.bind_socket("127.0.0.1", 0) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(HDKDError, match=f"--port {port}: cannot listen"):
            serve_command.run(parse([str(checkpoint), "--port", str(port), "--no-explain"]))


def test_command_serves_on_localhost_and_prints_the_url(checkpoint, monkeypatch, capsys):
    served = {}

    class FakeServer:
        def run(self, sockets):
            served["address"] = sockets[0].getsockname()

    def fake_uvicorn_server(app):
        served["app"] = app
        return FakeServer()

    monkeypatch.setattr("hdkd.deploy.serve.uvicorn_server", fake_uvicorn_server)
    assert serve_command.run(parse([str(checkpoint), "--port", "0", "--max-upload-mb", "1.5"])) == 0
    host, port = served["address"]
    assert host == "127.0.0.1" and f"http://127.0.0.1:{port}/" in capsys.readouterr().out
    with TestClient(served["app"], base_url="http://localhost") as c:
        assert c.get("/api/model").json()["max_upload_bytes"] == int(1.5 * 1024 * 1024)
    with TestClient(served["app"], base_url="http://attacker.example") as c:  # DNS rebinding shut out
        assert c.get("/api/model").status_code == 400


def load_benchmark():
    spec = importlib.util.spec_from_file_location("serve_load", REPO / "benchmarks" / "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_concurrent_clients_on_loopback_all_succeed(classifier, image_files):
    bench = load_benchmark()
    payloads = [(p.name, p.read_bytes()) for p in image_files]
    with serve.background_server(create_app(classifier, explain_as_png)) as url:
        assert url.startswith("http://127.0.0.1:")
        result = bench.run_load(url, payloads, requests=24, concurrency=4)
    assert result["failed"] == 0 and result["ok"] == 24, result["failures"]
    assert result["p50_ms"] <= result["p95_ms"] <= result["max_ms"]
    with pytest.raises(ValueError, match="loopback"):
        bench.run_load("http://example.org:80/", payloads, requests=1)
