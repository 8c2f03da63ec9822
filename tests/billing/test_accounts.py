import pytest

from billing.models import ApiKey, Membership, Tenant


@pytest.fixture
def tenants(db, django_user_model):
    made = []
    for i, currency in enumerate(["EUR", "USD", "JPY"]):
        tenant = Tenant.objects.create(slug=f"t{i}", name=f"Tenant {i}", currency=currency)
        user = django_user_model.objects.create_user(f"member{i}")
        Membership.objects.create(user=user, tenant=tenant)
        ApiKey.issue(tenant, "live")
        ApiKey.issue(tenant, "old")[0].revoke()
        made.append(tenant)
    return made


def test_finance_sees_every_account_with_members_and_active_keys(client, bob, tenants):
    client.force_login(bob)
    response = client.get("/finance/accounts/")

    assert response.status_code == 200
    rows = {t.slug: (t.members, t.active_keys) for t in response.context["table"].data}
    assert rows == {"t0": (1, 1), "t1": (1, 1), "t2": (1, 1)}


def test_the_accounts_list_filters_by_currency_and_search(client, bob, tenants):
    client.force_login(bob)
    by_currency = client.get("/finance/accounts/", {"currency": "JPY"}).context["table"].data
    by_search = client.get("/finance/accounts/", {"q": "tenant 1"}).context["table"].data
    assert [t.slug for t in by_currency] == ["t2"]
    assert [t.slug for t in by_search] == ["t1"]


def test_the_accounts_page_query_count_does_not_grow_with_tenants(
    client, bob, tenants, django_assert_max_num_queries, django_user_model
):
    client.force_login(bob)
    with django_assert_max_num_queries(8) as few:
        client.get("/finance/accounts/")
    for i in range(3, 30):
        Tenant.objects.create(slug=f"t{i}", name=f"Tenant {i}")
    with django_assert_max_num_queries(len(few.captured_queries)):
        client.get("/finance/accounts/")


def test_tenant_members_cannot_see_the_accounts(client, carol):
    client.force_login(carol)
    assert client.get("/finance/accounts/").status_code == 403


def test_each_role_lands_on_its_own_home(client, alice, bob, carol, django_user_model):
    client.force_login(bob)
    assert client.get("/").url == "/finance/accounts/"
    client.force_login(carol)
    assert client.get("/").url == "/portal/"
    client.force_login(django_user_model.objects.create_user("nobody"))
    assert "no role yet" in client.get("/").content.decode()


def test_slugs_the_console_uses_as_words_are_reserved(db):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match="reserved"):
        Tenant(slug="catalogue", name="Catalogue Inc").full_clean()
