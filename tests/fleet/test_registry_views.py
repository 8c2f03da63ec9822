"""The model registry's pages: operators see every version and upload catalogue models;
tenants see their own models and the catalogue in their portal; a version's page shows its
grade, why, and its latency per node class, live while it is being graded."""

from __future__ import annotations

import json
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from billing.models import Membership, Tenant
from fleet import artifacts
from fleet.models import Model, ModelVersion
from tests.inference.harness import doubler_model

pytestmark = pytest.mark.django_db

# The operator's list, whatever the number of versions: session, user, the user's groups
# (the nav asks is_finance), the owner choices of the filter form (tenants that own a model),
# the paginator's count, and the page of versions with model, owner and class joined in.
VERSION_LIST_QUERIES = 6
# The portal's list: session, user, the membership (tenant joined), groups, count, the page.
# Its owner choices are "yours" and "catalogue": no query.
PORTAL_LIST_QUERIES = 6
# A version's page: session, user, groups, the version (model, owner, class and uploader
# joined in), and its model's other versions (class joined in).
VERSION_PAGE_QUERIES = 5


@pytest.fixture(autouse=True)
def artifact_dir(settings, tmp_path):
    settings.OUTPOST_ARTIFACT_DIR = tmp_path / "artifacts"


@pytest.fixture
def doubler(tmp_path):
    return doubler_model(tmp_path / "doubler.onnx").read_bytes()


@pytest.fixture
def globex(db):
    return Tenant.objects.create(slug="globex", name="Globex", time_zone="America/New_York")


@pytest.fixture
def carols(client, carol):
    """A test client signed in as carol, an owner of acme."""
    client.force_login(carol)
    return client


@pytest.fixture
def dave(django_user_model, acme):
    """A viewer of acme."""
    user = django_user_model.objects.create_user("dave", "dave@acme.example", "dave-password")
    Membership.objects.create(user=user, tenant=acme, role="viewer")
    return user


def make_version(owner, name, number=1, **fields):
    """A registered version, without bytes on disk: the pages read only the database."""
    model, _ = Model.objects.get_or_create(owner=owner, name=name)
    return ModelVersion.objects.create(
        model=model,
        version=number,
        sha256=f"{model.pk:04x}{number:04x}".ljust(64, "e"),
        size_bytes=2_048 * number,
        opset=17,
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        outputs=[{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
        **fields,
    )


def grade(version, node_class, *, others=()):
    """Fill the version's grade as fleet.actions.grade_version would, without measuring."""
    version.record_grade(
        grade="tiny",
        node_class=node_class,
        stats={
            "parameters": 1_234_567,
            "initializer_bytes": 4_938_268,
            "op_histogram": {"Mul": 3, "Add": 1, "Gemm": 7},
            "flops": 4_720_000,
            "peak_memory_bytes": 5_242_880,
            "dynamic_batch": True,
        },
        measurement={"batch1_p50_s": 0.0004, "batch1_p95_s": 0.0006},
        latency=[
            {
                "node_class": node_class.name,
                "p50_ms": 2.0,
                "p95_ms": 3.5,
                "fits_memory": True,
                "meets_target": True,
            },
            *others,
        ],
        target_s=0.05,
        reasons=[
            "Graded tiny: 4.72 MFLOPs per inference and 5 MiB of peak memory.",
            "nano meets the 50 ms p95 target with room to spare.",
        ],
    )
    return version


def upload(client, url, data, *, name="sentiment", **fields):
    body = {"name": name, "file": SimpleUploadedFile("model.onnx", data), **fields}
    return client.post(url, body)


def models_listed(response) -> list[str]:
    """The list's model cells as they read: "acme/churn v2", "sentiment v1 (catalogue)"."""
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", response.content.decode(), re.S)
    listed = []
    for row in rows:
        link = re.search(r'<a hx-boost="false" href="[^"]+">(.*?)</a>(.*?)</td>', row, re.S)
        number = re.search(r">\s*v(\d+)\s*<", row)
        if link and number:
            name = re.sub(r"<[^>]+>", "", link.group(1)).strip()
            catalogue = " (catalogue)" if "catalogue" in link.group(2) else ""
            listed.append(f"{name} v{number.group(1)}{catalogue}")
    return listed


def figure(response) -> dict:
    match = re.search(
        r'<script type="application/json" data-chart-for="chart-latency">(.*?)</script>',
        response.content.decode(),
        re.S,
    )
    assert match, "no latency chart in the page"
    return json.loads(match.group(1))


# --- uploading -------------------------------------------------------------------------------


def test_an_operator_uploads_a_catalogue_model_and_lands_on_its_grading_page(
    operator, alice, doubler, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        response = upload(
            operator,
            reverse("registry:models"),
            doubler,
            description="Says whether a review is happy.",
            signals="tier:string, premium:bool",
        )

    version = ModelVersion.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("registry:version", args=[version.pk])
    assert version.model.owner is None
    assert (version.model.name, version.version, version.uploaded_by) == ("sentiment", 1, alice)
    assert version.model.signal_schema == {"tier": "string", "premium": "bool"}
    assert version.model.description == "Says whether a review is happy."
    assert artifacts.path_for(version.sha256).read_bytes() == doubler
    assert len(callbacks) == 1  # the grading task

    page = operator.get(response["Location"]).content.decode()
    assert "sentiment is registered as version 1; grading…" in page
    assert "Grading…" in page


def test_a_tenant_owner_uploads_a_model_of_their_own(carols, carol, acme, doubler):
    response = upload(carols, reverse("portal_models:models", args=["acme"]), doubler, name="churn")

    version = ModelVersion.objects.get()
    assert version.model.owner == acme
    assert version.uploaded_by == carol
    assert response["Location"] == reverse("portal_models:version", args=["acme", version.pk])
    assert (
        "acme/churn is registered as version 1" in carols.get(response["Location"]).content.decode()
    )


def test_a_refused_upload_shows_the_reason_and_stores_nothing(operator, tmp_path):
    response = upload(operator, reverse("registry:models"), b"\x00\x01 this is not protobuf \xff")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Not an ONNX model" in html
    assert 'class="invalid-feedback"' in html
    assert not Model.objects.exists()
    assert not ModelVersion.objects.exists()
    assert not (tmp_path / "artifacts").exists()


def test_the_same_bytes_again_are_recognised_not_duplicated(operator, doubler):
    first = upload(operator, reverse("registry:models"), doubler)
    again = upload(operator, reverse("registry:models"), doubler)

    assert again["Location"] == first["Location"]
    assert ModelVersion.objects.count() == 1
    page = operator.get(again["Location"]).content.decode()
    assert "These bytes were already version 1 of sentiment." in page


def test_new_bytes_become_the_next_version(operator, doubler, tmp_path):
    upload(operator, reverse("registry:models"), doubler)
    wider = doubler_model(tmp_path / "wider.onnx", width=8).read_bytes()

    response = upload(operator, reverse("registry:models"), wider)

    assert "registered as version 2" in operator.get(response["Location"]).content.decode()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "Churn Model"}, "Use lowercase letters, digits and dashes"),
        ({"signals": "tier"}, "“tier” should read name:type"),
        ({"signals": "tier:text"}, "types are string, int, float, bool"),
        ({"signals": "tier:string, tier:int"}, "The signal “tier” is named twice."),
        ({"signals": "{not json"}, "This is not a JSON object"),
        ({"signals": "9lives:int"}, "must start with a letter or _"),
    ],
)
def test_a_form_that_does_not_read_says_which_field_and_stores_nothing(
    operator, doubler, fields, message
):
    response = upload(operator, reverse("registry:models"), doubler, **fields)

    assert response.status_code == 200
    html = response.content.decode()
    assert message in html
    assert "Choose the file again" in html
    assert not ModelVersion.objects.exists()


def test_signals_may_also_be_given_as_the_json_the_api_takes(operator, doubler):
    upload(operator, reverse("registry:models"), doubler, signals='{"region": "string"}')

    assert Model.objects.get().signal_schema == {"region": "string"}


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(operator, doubler, settings):
    settings.OUTPOST_MAX_MODEL_BYTES = 16

    response = upload(operator, reverse("registry:models"), doubler)

    assert "models may be at most 16 B." in response.content.decode()
    assert not ModelVersion.objects.exists()


# --- the operator's list ---------------------------------------------------------------------


@pytest.fixture
def registry(acme, globex, nano, standard):
    """The catalogue's sentiment (v1 graded, v2 grading), acme's churn (graded medium on
    standard) and globex's fraud (failed)."""
    sentiment = grade(make_version(None, "sentiment", 1), nano)
    make_version(None, "sentiment", 2)
    churn = make_version(acme, "churn", 1)
    churn.record_grade(
        grade="medium",
        node_class=standard,
        stats={},
        measurement={},
        latency=[],
        target_s=0.2,
        reasons=["medium"],
    )
    fraud = make_version(globex, "fraud", 1)
    fraud.record_failure("the model could not be measured: onnxruntime refused it")
    return {"sentiment": sentiment, "churn": churn, "fraud": fraud}


def test_operators_see_every_version_of_every_owner(operator, registry):
    response = operator.get(reverse("registry:models"))

    assert response.status_code == 200
    assert sorted(models_listed(response)) == [
        "acme/churn v1",
        "globex/fraud v1",
        "sentiment v1 (catalogue)",
        "sentiment v2 (catalogue)",
    ]
    html = response.content.decode()
    assert (
        '<span class="badge text-bg-secondary" title="Tiny (classification-sized)">tiny</span>'
        in html
    )
    assert '<span class="badge text-bg-success">Graded</span>' in html
    assert '<span class="badge text-bg-info">Grading</span>' in html
    assert '<span class="badge text-bg-danger">Grading failed</span>' in html
    assert (
        f'<code title="{registry["churn"].sha256}">{registry["churn"].sha256[:12]}…</code>' in html
    )
    assert "2 KiB" in html  # size
    assert f'href="{reverse("registry:version", args=[registry["churn"].pk])}"' in html


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"owner": "catalogue"}, ["sentiment v1 (catalogue)", "sentiment v2 (catalogue)"]),
        ({"owner": "acme"}, ["acme/churn v1"]),
        ({"grade": "medium"}, ["acme/churn v1"]),
        ({"status": "grading"}, ["sentiment v2 (catalogue)"]),
        ({"status": "failed"}, ["globex/fraud v1"]),
        ({"q": "SENTI"}, ["sentiment v1 (catalogue)", "sentiment v2 (catalogue)"]),
        ({"q": "acme/ch"}, ["acme/churn v1"]),
        ({"q": "globex/churn"}, []),
        ({"owner": "catalogue", "status": "graded"}, ["sentiment v1 (catalogue)"]),
    ],
)
def test_the_filters_narrow_the_list(operator, registry, filters, expected):
    response = operator.get(reverse("registry:models"), filters)

    assert sorted(models_listed(response)) == expected


def test_the_owner_filter_offers_the_catalogue_and_tenants_with_models(operator, registry):
    Tenant.objects.create(slug="initech", name="Initech")

    html = operator.get(reverse("registry:models")).content.decode()

    owner_select = re.search(r'<select name="owner".*?</select>', html, re.S).group(0)
    assert re.findall(r'<option value="([^"]*)"', owner_select) == [
        "",
        "catalogue",
        "acme",
        "globex",
    ]


def test_an_unknown_owner_is_explained_rather_than_crashing(operator, registry):
    response = operator.get(reverse("registry:models"), {"owner": "nobody"})

    assert "Select a valid choice" in response.content.decode()
    assert len(models_listed(response)) == 4


def test_the_list_costs_the_same_queries_for_3_or_30_versions(operator, acme, globex, nano):
    def queries_for(count: int) -> int:
        ModelVersion.objects.all().delete()
        Model.objects.all().delete()
        for number in range(count):
            owner = (None, acme, globex)[number % 3]
            version = make_version(owner, f"model-{number % 7}", number + 1)
            if number % 2:
                grade(version, nano)
        with CaptureQueriesContext(connection) as captured:
            response = operator.get(reverse("registry:models"))
        assert len(models_listed(response)) == count
        return len(captured)

    assert queries_for(3) == queries_for(30) == VERSION_LIST_QUERIES


def test_an_htmx_poll_of_the_list_gets_only_the_table(operator, registry):
    response = operator.get(reverse("registry:models"), {"owner": "acme"}, HTTP_HX_REQUEST="true")

    html = response.content.decode()
    assert "<html" not in html
    assert 'id="version-filters"' not in html
    assert models_listed(response) == ["acme/churn v1"]


def test_an_empty_registry_says_so(operator, db):
    html = operator.get(reverse("registry:models")).content.decode()

    assert "No model versions match these filters." in html
    assert "Upload a model" in html


# --- a version's page ------------------------------------------------------------------------


def test_a_graded_version_shows_its_grade_the_reasons_and_the_latency_chart(
    operator, nano, standard
):
    version = grade(
        make_version(None, "sentiment", 1),
        nano,
        others=[
            {
                "node_class": "standard",
                "p50_ms": 0.5,
                "p95_ms": 0.9,
                "fits_memory": True,
                "meets_target": True,
            }
        ],
    )

    response = operator.get(reverse("registry:version", args=[version.pk]))

    assert response.status_code == 200
    html = response.content.decode()
    assert (
        '<span class="badge text-bg-secondary" title="Tiny (classification-sized)">tiny</span>'
        in html
    )
    assert "Served on <strong>nano</strong> nodes" in html
    assert "p95 target 50 ms" in html
    assert "Graded tiny: 4.72 MFLOPs per inference and 5 MiB of peak memory." in html
    assert "nano meets the 50 ms p95 target with room to spare." in html
    chart = figure(response)
    assert [trace["x"] for trace in chart["data"]][0] == ["nano", "standard"]
    assert "hx-trigger" not in re.search(r'<div id="version-live"[^>]*>', html).group(0)
    assert "plotly.min.js" in html


def test_a_graded_version_lists_its_graph_statistics(operator, nano):
    version = grade(make_version(None, "sentiment", 1), nano)

    html = operator.get(reverse("registry:version", args=[version.pk])).content.decode()

    for shown in ("1,234,567", "4.71 MiB", "4.72 MFLOPs", "5 MiB", "Dynamic batch"):
        assert shown in html
    operators = re.findall(r"<code class=\"text-body\">(\w+)</code> × (\d+)", html)
    assert operators == [("Gemm", "7"), ("Mul", "3"), ("Add", "1")]


def test_a_version_page_shows_the_signature_signals_and_artifact(operator, doubler):
    response = upload(operator, reverse("registry:models"), doubler, signals="tier:string")

    html = operator.get(response["Location"]).content.decode()

    version = ModelVersion.objects.get()
    assert f'<code id="version-sha256" class="secret-block">{version.sha256}</code>' in html
    assert "<code>x</code></td><td>FLOAT</td><td><code>[-1, 4]</code>" in html
    assert "<code>y</code></td><td>FLOAT</td><td><code>[-1, 4]</code>" in html
    assert '<code>tier</code><span class="text-body-secondary">string</span>' in html
    assert f"opset {version.opset}" in html


def test_a_version_being_graded_polls_every_two_seconds(operator):
    version = make_version(None, "sentiment", 1)

    html = operator.get(reverse("registry:version", args=[version.pk])).content.decode()

    live = re.search(r'<div id="version-live"[^>]*>', html, re.S).group(0)
    assert 'hx-trigger="every 2s' in live
    assert 'hx-swap="outerHTML"' in live
    assert "Grading…" in html


def test_the_poll_gets_the_grade_panel_alone_and_stops_once_graded(operator, nano):
    version = make_version(None, "sentiment", 1)
    url = reverse("registry:version", args=[version.pk])
    while_grading = operator.get(url, HTTP_HX_REQUEST="true").content.decode()

    grade(version, nano)
    once_graded = operator.get(url, HTTP_HX_REQUEST="true")

    assert "<html" not in while_grading
    assert while_grading.lstrip().startswith('<div id="version-live"')
    assert "Grading…" in while_grading
    html = once_graded.content.decode()
    assert "<html" not in html
    assert "hx-trigger" not in html
    assert "nano meets the 50 ms p95 target" in html
    assert figure(once_graded)["data"]
    assert "HX-Request" in once_graded["Vary"]


def test_a_failed_version_says_why_and_does_not_poll(operator):
    version = make_version(None, "sentiment", 1)
    version.record_failure("the model could not be measured: Mul needs two inputs")

    html = operator.get(reverse("registry:version", args=[version.pk])).content.decode()

    assert "This version could not be graded." in html
    assert "the model could not be measured: Mul needs two inputs" in html
    assert '<span class="badge text-bg-danger">Grading failed</span>' in html
    assert "hx-trigger" not in re.search(r'<div id="version-live"[^>]*>', html).group(0)
    assert "plotly.min.js" not in html


def test_a_version_page_links_the_other_versions_of_its_model(operator):
    first = make_version(None, "sentiment", 1)
    second = make_version(None, "sentiment", 2)
    lonely = make_version(None, "other", 1)

    html = operator.get(reverse("registry:version", args=[second.pk])).content.decode()

    others = re.findall(r'<a href="/fleet/models/(\d+)/">v(\d+)</a>', html)
    assert others == [(str(first.pk), "1")]
    only = operator.get(reverse("registry:version", args=[lonely.pk])).content.decode()
    assert "This is the model's only version." in only


def test_an_unknown_version_is_a_404(operator, db):
    assert operator.get(reverse("registry:version", args=[999])).status_code == 404


# --- the tenant's portal ---------------------------------------------------------------------


def test_a_tenant_sees_its_own_models_and_the_catalogue_only(carols, registry):
    response = carols.get(reverse("portal_models:models", args=["acme"]))

    assert response.status_code == 200
    assert sorted(models_listed(response)) == [
        "acme/churn v1",
        "sentiment v1 (catalogue)",
        "sentiment v2 (catalogue)",
    ]
    html = response.content.decode()
    assert f'href="/portal/acme/models/{registry["churn"].pk}/"' in html
    assert '<a class="nav-link active" href="/portal/acme/models/">Models</a>' in html


@pytest.mark.parametrize(
    ("owner", "expected"),
    [
        ("acme", ["acme/churn v1"]),
        ("catalogue", ["sentiment v1 (catalogue)", "sentiment v2 (catalogue)"]),
        ("globex", ["acme/churn v1", "sentiment v1 (catalogue)", "sentiment v2 (catalogue)"]),
    ],
)
def test_a_tenant_filters_between_its_models_and_the_catalogue(carols, registry, owner, expected):
    response = carols.get(reverse("portal_models:models", args=["acme"]), {"owner": owner})

    assert sorted(models_listed(response)) == expected


def test_the_portal_list_costs_the_same_queries_for_3_or_30_versions(carols, acme, nano):
    def queries_for(count: int) -> int:
        ModelVersion.objects.all().delete()
        Model.objects.all().delete()
        for number in range(count):
            version = make_version((None, acme)[number % 2], f"model-{number % 5}", number + 1)
            if number % 2:
                grade(version, nano)
        with CaptureQueriesContext(connection) as captured:
            response = carols.get(reverse("portal_models:models", args=["acme"]))
        assert len(models_listed(response)) == count
        return len(captured)

    assert queries_for(3) == queries_for(30) == PORTAL_LIST_QUERIES


def test_a_tenant_opens_its_own_and_catalogue_versions(carols, registry):
    own = carols.get(reverse("portal_models:version", args=["acme", registry["churn"].pk]))
    catalogue = carols.get(
        reverse("portal_models:version", args=["acme", registry["sentiment"].pk])
    )

    assert own.status_code == 200
    assert catalogue.status_code == 200
    assert "nano meets the 50 ms p95 target" in catalogue.content.decode()
    assert 'href="/portal/acme/models/"' in catalogue.content.decode()


def test_another_tenants_version_is_a_404_not_a_403(carols, registry):
    response = carols.get(reverse("portal_models:version", args=["acme", registry["fraud"].pk]))

    assert response.status_code == 404


def test_another_tenants_portal_is_a_404(carols, registry):
    assert carols.get(reverse("portal_models:models", args=["globex"])).status_code == 404
    response = carols.get(reverse("portal_models:version", args=["globex", registry["fraud"].pk]))
    assert response.status_code == 404


def test_a_viewer_reads_the_models_but_cannot_upload(client, dave, registry, doubler):
    client.force_login(dave)

    page = client.get(reverse("portal_models:models", args=["acme"]))
    refused = upload(client, reverse("portal_models:models", args=["acme"]), doubler)

    assert page.status_code == 200
    assert "Viewers can look at the models" in page.content.decode()
    assert "Upload and grade" not in page.content.decode()
    assert refused.status_code == 403
    assert ModelVersion.objects.count() == 4


# --- roles -----------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["carol", "bob"])
def test_only_operators_open_the_operator_pages(client, carol, bob, registry, who):
    client.force_login({"carol": carol, "bob": bob}[who])

    assert client.get(reverse("registry:models")).status_code == 403
    assert client.post(reverse("registry:models"), {}).status_code == 403
    version_url = reverse("registry:version", args=[registry["churn"].pk])
    assert client.get(version_url).status_code == 403


def test_signed_out_visitors_are_sent_to_log_in(client, registry):
    for url in (
        reverse("registry:models"),
        reverse("registry:version", args=[registry["churn"].pk]),
        reverse("portal_models:models", args=["acme"]),
    ):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))


def test_the_console_nav_shows_models_to_operators_only(client, alice, carol):
    client.force_login(alice)
    operators_page = client.get(reverse("registry:models")).content.decode()
    client.force_login(carol)
    tenants_page = client.get(reverse("portal_models:models", args=["acme"])).content.decode()

    assert '<a class="nav-link active" href="/fleet/models/">Models</a>' in operators_page
    assert 'href="/fleet/models/"' not in tenants_page


def test_a_version_page_costs_the_same_queries_however_many_versions_its_model_has(operator, nano):
    def queries_for(count: int) -> int:
        ModelVersion.objects.all().delete()
        versions = [grade(make_version(None, "sentiment", n + 1), nano) for n in range(count)]
        with CaptureQueriesContext(connection) as captured:
            operator.get(reverse("registry:version", args=[versions[-1].pk]))
        return len(captured)

    assert queries_for(2) == queries_for(20) == VERSION_PAGE_QUERIES
