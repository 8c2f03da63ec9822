"""The shared layout, signing in and out, and the vendored front-end assets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

pytestmark = pytest.mark.django_db

VENDOR = Path(settings.BASE_DIR) / "console" / "static" / "vendor"


def nav(html: str) -> str:
    return re.search(r'<nav class="navbar.*?</nav>', html, re.S).group(0)


def test_operators_see_every_operator_page_in_the_nav(operator):
    menu = nav(operator.get(reverse("fleet:nodes")).content.decode())

    for link in (
        'href="/"',
        'href="/fleet/"',
        'href="/fleet/enroll/"',
        'href="/admin/"',
        'href="/api/v1/docs"',
    ):
        assert link in menu, link
    assert "alice" in menu


def test_others_do_not_see_operator_pages_in_the_nav(client, bob):
    client.force_login(bob)

    menu = nav(client.get(reverse("finance:accounts")).content.decode())

    assert 'href="/fleet/"' not in menu and 'href="/admin/"' not in menu
    assert 'href="/api/v1/docs"' in menu and 'href="/finance/accounts/"' in menu
    assert "bob" in menu and "finance" in menu


def test_the_nav_marks_the_current_page(operator):
    menu = nav(operator.get(reverse("fleet:enroll")).content.decode())

    assert 'class="nav-link active" href="/fleet/enroll/"' in menu
    assert 'class="nav-link" href="/fleet/"' in menu


def test_logging_out_is_a_post_with_a_csrf_token(operator):
    menu = nav(operator.get(reverse("home")).content.decode())

    form = re.search(r'<form method="post" action="/logout/".*?</form>', menu, re.S).group(0)
    assert 'name="csrfmiddlewaretoken"' in form


def test_htmx_requests_carry_the_csrf_token(operator):
    html = operator.get(reverse("home")).content.decode()

    assert re.search(r"<body hx-headers='\{\"X-CSRFToken\": \"[\w-]+\"\}'", html)


def test_pages_load_vendored_assets_and_nothing_from_a_cdn(operator):
    html = operator.get(reverse("home")).content.decode()

    for asset in (
        "vendor/bootstrap.min.css",
        "vendor/bootstrap.bundle.min.js",
        "vendor/htmx.min.js",
        "vendor/plotly.min.js",
    ):
        assert f"/static/{asset}" in html
    assert not re.search(r'(src|href)="(https?:)?//', html)


def test_every_vendored_file_is_there_and_listed_in_the_readme():
    readme = (VENDOR / "README.md").read_text()

    for name in ("htmx.min.js", "plotly.min.js", "bootstrap.min.css", "bootstrap.bundle.min.js"):
        assert (VENDOR / name).stat().st_size > 10_000, name
        assert name in readme, name


def test_the_login_page_shows_a_form(client):
    html = client.get(reverse("login")).content.decode()

    assert 'name="username"' in html and 'name="password"' in html
    assert 'href="/fleet/"' not in html


def test_a_wrong_password_is_explained(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": "nope"})

    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()


def test_signing_in_leads_home_and_signing_out_leads_back_to_sign_in(client, alice):
    signed_in = client.post(reverse("login"), {"username": "alice", "password": "alice-password"})
    assert signed_in["Location"] == reverse("home")
    assert client.get(reverse("home")).status_code == 200

    signed_out = client.post(reverse("logout"))

    assert signed_out["Location"] == reverse("login")
    assert client.get(reverse("home")).status_code == 302


def test_signing_in_returns_to_the_page_asked_for(client, alice):
    response = client.post(
        reverse("login"),
        {"username": "alice", "password": "alice-password", "next": "/fleet/enroll/"},
    )

    assert response["Location"] == "/fleet/enroll/"
