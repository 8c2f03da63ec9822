import pytest

from billing.models import ApiKey, Membership, Tenant
from inference.protocol import hash_secret


@pytest.fixture
def globex(db):
    return Tenant.objects.create(slug="globex", name="Globex")


def test_a_key_is_stored_hashed_and_authenticates_by_its_secret(acme):
    key, secret = ApiKey.issue(acme, "ci")

    assert secret.startswith("opk_") and len(secret) > 40
    assert key.secret_hash == hash_secret(secret)
    assert secret not in (key.prefix, key.secret_hash)
    assert key.prefix == secret[:12]
    assert ApiKey.authenticate(secret) == key
    assert ApiKey.authenticate(secret + "x") is None


def test_a_revoked_key_no_longer_authenticates(acme):
    key, secret = ApiKey.issue(acme, "ci")
    key.revoke()
    assert ApiKey.authenticate(secret) is None


def test_a_member_creates_a_key_and_sees_the_secret_once(client, carol, acme):
    client.force_login(carol)
    response = client.post("/portal/acme/keys/", {"name": "checkout service"})

    key = ApiKey.objects.get(tenant=acme)
    secret_shown = response.context["new_secret"]
    assert ApiKey.authenticate(secret_shown) == key
    assert secret_shown in response.content.decode()

    again = client.get("/portal/acme/keys/")
    assert secret_shown not in again.content.decode()
    assert key.prefix in again.content.decode()


def test_an_empty_key_name_is_refused_with_a_message(client, carol, acme):
    client.force_login(carol)
    response = client.post("/portal/acme/keys/", {"name": ""})
    assert "This field is required." in response.content.decode()
    assert not ApiKey.objects.exists()


def test_a_viewer_cannot_issue_keys(client, django_user_model, acme):
    dave = django_user_model.objects.create_user("dave", password="dave-password")
    Membership.objects.create(user=dave, tenant=acme, role="viewer")
    client.force_login(dave)

    assert client.post("/portal/acme/keys/", {"name": "x"}).status_code == 403
    assert not ApiKey.objects.exists()


def test_a_member_revokes_a_key(client, carol, acme):
    key, secret = ApiKey.issue(acme, "old")
    client.force_login(carol)

    response = client.post(f"/portal/acme/keys/{key.pk}/revoke/")

    assert response.status_code == 302
    assert ApiKey.authenticate(secret) is None


def test_another_tenants_pages_and_keys_are_invisible(client, carol, globex):
    key, secret = ApiKey.issue(globex, "globex prod")
    client.force_login(carol)

    assert client.get("/portal/globex/").status_code == 404
    assert client.get("/portal/globex/keys/").status_code == 404
    assert client.post(f"/portal/acme/keys/{key.pk}/revoke/").status_code == 404
    assert ApiKey.authenticate(secret) == key
    assert key.prefix not in client.get("/portal/acme/keys/").content.decode()


def test_the_portal_sends_a_single_tenant_member_to_their_tenant(client, carol):
    client.force_login(carol)
    assert client.get("/portal/").url == "/portal/acme/"


def test_anonymous_visitors_are_sent_to_login(client, acme):
    response = client.get("/portal/acme/keys/")
    assert response.status_code == 302
    assert response.url.startswith("/login/")
