"""The deployment files refer only to things that exist. No Docker engine runs here, so
docker-compose.yml is checked by reading it: every command must name a real program entry
and every environment variable it sets must be one the project reads."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.core.management import get_commands

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
OWN_SERVICES = {name: s for name, s in SERVICES.items() if s.get("build")}


def project_sources() -> str:
    parts = [ROOT / "console", ROOT / "billing", ROOT / "fleet", ROOT / "inference"]
    return "\n".join(p.read_text() for d in parts for p in d.rglob("*.py"))


def test_the_deployment_has_every_piece_the_design_names():
    for piece in ["postgres", "redis", "console", "worker", "beat", "prometheus"]:
        assert piece in SERVICES
    agents = [s for s in OWN_SERVICES.values() if s["command"][:3] == ["python", "-m", "inference"]]
    assert len(agents) >= 2


def test_the_console_runs_on_a_real_application_server():
    command = SERVICES["console"]["command"]
    assert command[0] == "gunicorn"
    module, attribute = command[1].split(":")
    assert callable(getattr(importlib.import_module(module), attribute))


@pytest.mark.parametrize("name", sorted(OWN_SERVICES))
def test_every_command_names_something_that_exists(name):
    command = OWN_SERVICES[name]["command"]
    if command[:2] == ["python", "manage.py"]:
        assert command[2] in get_commands()
    elif command[0] == "gunicorn":
        module, attribute = command[1].split(":")
        assert hasattr(importlib.import_module(module), attribute)
    elif command[0] == "celery":
        assert command[1:3] == ["-A", "console"]
        assert importlib.import_module("console.celery").app.main == "outpost"
        assert command[3] in {"worker", "beat"}
    elif command[:3] == ["python", "-m", "inference"]:
        help_text = subprocess.run(
            [sys.executable, "-m", "inference", command[3], "--help"],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
        for option in command[4:]:
            flag = option.split("=", 1)[0]
            assert flag in help_text, f"{name}: `python -m inference {command[3]}` has no {flag}"
    else:
        pytest.fail(f"{name}: unrecognised command {command}")


def test_every_variable_set_for_our_services_is_read_by_the_project():
    sources = project_sources()
    variables = {v for s in OWN_SERVICES.values() for v in (s.get("environment") or {})}
    assert variables, "the console services set no environment"
    for variable in sorted(variables):
        assert re.search(rf"[\"']{variable}[\"']", sources), f"{variable} is read nowhere"


def test_every_file_mounted_from_the_repository_exists():
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_the_production_settings_pass_check_deploy():
    from inference import protocol

    env = {
        **os.environ,
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "x" * 20 + "-production-secret-of-at-least-fifty-characters-0123",
        "DJANGO_ALLOWED_HOSTS": "console.example.net",
        "OUTPOST_SIGNING_KEY": protocol.private_key_to_b64(protocol.generate_private_key()),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG must be one of"),
        ({"DJANGO_DEBUG": "false"}, "DJANGO_SECRET_KEY is required"),
        ({"DATABASE_URL": "nosuchdb://x"}, "DATABASE_URL"),
        ({"PROMETHEUS_URL": "prometheus:9090"}, "PROMETHEUS_URL must be a URL"),
        ({"OUTPOST_HEARTBEAT_INTERVAL_S": "often"}, "must be a whole number"),
        ({"STRIPE_API_KEY": "sk_test_x"}, "STRIPE_WEBHOOK_SECRET is required"),
    ],
)
def test_bad_settings_stop_the_console_with_a_clear_message(variables, message):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "STRIPE_"))}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**env, **variables},
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_the_node_requirements_file_is_the_node_extra():
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    lines = (ROOT / "deploy" / "node-requirements.txt").read_text().splitlines()
    assert [line for line in lines if line and not line.startswith("#")] == extra["node"]
