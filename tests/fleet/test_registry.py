"""Registering model versions through the API: validation before anything is stored,
recognised repeats, version numbers, and each tenant seeing only its own models."""

import json

import onnx
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from onnx import TensorProto, helper

from billing.models import ApiKey, Tenant
from fleet import artifacts
from fleet.models import Model, ModelVersion
from tests.inference.harness import doubler_model


@pytest.fixture(autouse=True)
def artifact_dir(settings, tmp_path):
    settings.OUTPOST_ARTIFACT_DIR = tmp_path / "artifacts"


@pytest.fixture
def acme_key(acme):
    return ApiKey.issue(acme, "ci")[1]


@pytest.fixture
def doubler(tmp_path):
    return doubler_model(tmp_path / "doubler.onnx").read_bytes()


def upload(client, key, data, name="churn", **fields):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"name": name, "file": SimpleUploadedFile("model.onnx", data), **fields}
    return client.post("/api/v1/models", body, headers=headers)


def test_a_tenant_registers_a_version_and_it_goes_to_grading(
    client, acme, acme_key, doubler, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        response = upload(client, acme_key, doubler, signals=json.dumps({"tier": "string"}))

    assert response.status_code == 201
    body = response.json()
    assert (body["model"], body["owner"], body["version"], body["status"]) == (
        "churn",
        "acme",
        1,
        "grading",
    )
    assert body["created"] is True
    assert body["signals"] == {"tier": "string"}
    assert body["inputs"] == [{"name": "x", "datatype": "FLOAT", "shape": [-1, 4]}]
    assert body["sha256"] == artifacts.sha256(doubler)
    assert artifacts.path_for(body["sha256"]).read_bytes() == doubler
    assert len(callbacks) == 1  # the grading task, enqueued once the upload is committed


def test_the_same_bytes_again_are_recognised_not_duplicated(client, acme_key, doubler):
    first = upload(client, acme_key, doubler).json()
    again = upload(client, acme_key, doubler)

    assert again.status_code == 200
    assert again.json()["created"] is False
    assert again.json()["version"] == first["version"]
    assert ModelVersion.objects.count() == 1


def test_new_bytes_become_the_next_version(client, acme_key, doubler, tmp_path):
    upload(client, acme_key, doubler)
    wider = doubler_model(tmp_path / "wider.onnx", width=8).read_bytes()

    assert upload(client, acme_key, wider).json()["version"] == 2


def bad_models(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    relu = helper.make_node("Relu", ["x"], ["y"])

    def model(graph, opset=17):
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 10
        return m.SerializeToString()

    sequence = helper.make_tensor_sequence_value_info("x", TensorProto.FLOAT, None)
    length = helper.make_tensor_value_info("y", TensorProto.INT64, [])
    return {
        "empty": (b"", "the file is empty"),
        "garbage": (b"\x00\x01 this is not protobuf \xff", "not an ONNX model"),
        "dangling": (
            model(helper.make_graph([helper.make_node("Relu", ["nope"], ["y"])], "g", [x], [y])),
            "the ONNX checker refused the model",
        ),
        "too new": (model(helper.make_graph([relu], "g", [x], [y]), opset=25), "opset 25"),
        "sequence": (
            model(
                helper.make_graph(
                    [helper.make_node("SequenceLength", ["x"], ["y"])], "g", [sequence], [length]
                )
            ),
            "input 'x' is not a tensor",
        ),
    }


@pytest.mark.parametrize("case", ["empty", "garbage", "dangling", "too new", "sequence"])
def test_a_refused_upload_says_why_and_stores_nothing(client, acme_key, tmp_path, case, settings):
    data, message = bad_models(tmp_path)[case]
    response = upload(client, acme_key, data)

    assert response.status_code == 400, response.content
    assert message in response.json()["error"]
    assert not ModelVersion.objects.exists()
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "Churn Model"}, "name must be lowercase"),
        ({"signals": "{not json"}, "signals must be a JSON object"),
        ({"signals": '{"tier": "colour"}'}, "types are string, int, float, bool"),
        ({"signals": '{"1tier": "string"}'}, "signal name '1tier'"),
        ({"signals": '["tier"]'}, "signals must be a JSON object"),
        ({"signals": '{"priority": "int"}'}, "'priority' is reserved"),
        ({"signals": '{"outpost_tier": "string"}'}, "'outpost_tier' is reserved"),
    ],
)
def test_bad_names_and_signals_are_refused(client, acme_key, doubler, fields, message):
    response = upload(client, acme_key, doubler, **fields)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert not ModelVersion.objects.exists()


def test_an_oversized_upload_is_refused_with_413(client, acme_key, doubler, settings):
    settings.OUTPOST_MAX_MODEL_BYTES = len(doubler) - 1
    response = upload(client, acme_key, doubler)
    assert response.status_code == 413
    assert "at most" in response.json()["error"]


def test_a_bad_key_is_refused(client, acme, doubler):
    assert upload(client, "opk_forged", doubler).status_code == 401
    assert upload(client, None, doubler).status_code == 401


def test_operators_register_catalogue_models(client, alice, doubler):
    client.force_login(alice)
    response = upload(client, None, doubler, name="sentiment")

    assert response.status_code == 201
    assert response.json()["owner"] is None
    assert Model.objects.catalogue().get().name == "sentiment"


def test_a_tenant_sees_its_own_and_the_catalogues_models_only(
    client, acme, acme_key, alice, doubler, tmp_path
):
    globex = Tenant.objects.create(slug="globex", name="Globex")
    globex_key = ApiKey.issue(globex, "ci")[1]
    upload(client, globex_key, doubler, name="secret-model")
    client.force_login(alice)
    upload(client, None, doubler, name="sentiment")
    client.logout()
    upload(client, acme_key, doubler, name="churn")

    headers = {"Authorization": f"Bearer {acme_key}"}
    seen = client.get("/api/v1/models", headers=headers).json()
    assert sorted((v["model"], v["owner"]) for v in seen) == [
        ("churn", "acme"),
        ("sentiment", None),
    ]
    missing = client.get("/api/v1/models/secret-model/versions/1", headers=headers)
    assert missing.status_code == 404
    assert client.get("/api/v1/models/churn/versions/1", headers=headers).json()["owner"] == "acme"


def test_a_versions_bytes_and_signature_cannot_change(client, acme_key, doubler):
    upload(client, acme_key, doubler)
    version = ModelVersion.objects.get()

    version.sha256 = "0" * 64
    with pytest.raises(ValueError, match="immutable"):
        version.save()
    with pytest.raises(ValueError, match="immutable"):
        version.save(update_fields=["sha256"])


def test_the_inspection_reads_the_signature(tmp_path):
    model, signature = artifacts.inspect(doubler_model(tmp_path / "d.onnx").read_bytes())
    assert isinstance(model, onnx.ModelProto)
    assert signature.opset == 17
    assert signature.outputs == [{"name": "y", "datatype": "FLOAT", "shape": [-1, 4]}]


def test_a_node_downloads_an_artifact_by_its_sha256(
    client, acme_key, doubler, make_node, eu_west, nano
):
    node = make_node("fra-nano-1", eu_west, nano)
    digest = upload(client, acme_key, doubler).json()["sha256"]
    headers = {"Authorization": f"Bearer {node.credential}"}

    response = client.get(f"/api/v1/nodes/artifacts/{digest}", headers=headers)

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == doubler
    assert response["X-Outpost-Sha256"] == digest
    assert client.get(f"/api/v1/nodes/artifacts/{'0' * 64}", headers=headers).status_code == 404
    assert client.get(f"/api/v1/nodes/artifacts/{digest}").status_code == 401
