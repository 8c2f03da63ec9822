"""Outpost console settings: one file, every value from the environment.

The README's "Configuration" table lists each variable. Defaults are the embedded demo
(SQLite, Celery's filesystem broker); production sets DJANGO_DEBUG=false and must then
provide a real secret key, hosts and signing key, or the process refuses to start.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from console.env import env_bool, env_float, env_int, env_json, env_list, env_str, env_url
from inference.protocol import public_key_from_b64 as _public_key_from_b64

BASE_DIR = Path(__file__).resolve().parent.parent
# Local state of the embedded default: the SQLite file, the Celery folders, the dev signing key.
VAR_DIR = Path(env_str("OUTPOST_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DJANGO_DEBUG", True)

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if SECRET_KEY is None:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY is required when DJANGO_DEBUG=false")
    SECRET_KEY = "django-insecure-outpost-development-only-never-use-in-production"  # noqa: S105
elif not DEBUG and (len(SECRET_KEY) < 50 or SECRET_KEY.startswith("django-insecure")):
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be at least 50 random characters")

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS is required when DJANGO_DEBUG=false")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_filters",
    "django_tables2",
    "console",
    "billing",
    "fleet",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

if not DEBUG:
    # In production the console serves its own static files (no separate web server needed);
    # in development runserver does.
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")

ROOT_URLCONF = "console.urls"
WSGI_APPLICATION = "console.wsgi.application"
ASGI_APPLICATION = "console.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "console.context_processors.roles",
            ],
        },
    },
]

# --- database ---------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'outpost.sqlite3'}")
try:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a database URL: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # WAL lets the web server, the worker and beat read while one of them writes.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # A file, not memory, so that the processes a test starts (Celery worker) see its data.
    # One per test process, so two test runs on one machine do not share a database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- time and language ------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- static files (vendored from the registries; see console/static/vendor/README.md) -------
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "var" / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# --- security (production values; `check --deploy` must pass with DJANGO_DEBUG=false) --------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31_536_000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

# --- Celery -----------------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if CELERY_BROKER_URL == "filesystem://":
    # Celery's filesystem transport: a real worker and beat with no broker server.
    _queue_dir = VAR_DIR / "celery" / "queue"
    _queue_dir.mkdir(parents=True, exist_ok=True)
    (VAR_DIR / "celery" / "processed").mkdir(parents=True, exist_ok=True)
    (VAR_DIR / "celery" / "control").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "processed_folder": str(VAR_DIR / "celery" / "processed"),
        "control_folder": str(VAR_DIR / "celery" / "control"),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celery" / "beat-schedule")
CELERY_BEAT_SCHEDULE = {
    "detect-node-status-flips": {
        "task": "fleet.tasks.detect_status_flips_task",
        "schedule": 10.0,
    },
    "advance-rollouts": {
        "task": "fleet.tasks.advance_rollouts_task",
        "schedule": 5.0,
    },
    "calibrate-speed-factors": {
        "task": "fleet.tasks.calibrate_speed_factors_task",
        "schedule": 60.0,
    },
    "check-drift": {
        "task": "fleet.tasks.check_drift_task",
        "schedule": 20.0,
    },
    # Prometheus' file_sd targets from the registry (fleet/observability/targets.py).
    "write-prometheus-targets": {
        "task": "fleet.tasks.write_prometheus_targets_task",
        "schedule": 30.0,
    },
    "prune-node-samples": {
        "task": "fleet.tasks.prune_node_samples_task",
        "schedule": 3600.0,
    },
    "prune-decisions": {
        "task": "fleet.tasks.prune_decisions_task",
        "schedule": 3600.0,
    },
    "refresh-usage-rollups": {
        "task": "billing.tasks.refresh_usage_rollups_task",
        "schedule": 15.0,
    },
    "refresh-invoice-drafts": {
        "task": "billing.tasks.refresh_drafts_task",
        "schedule": float(env_int("OUTPOST_DRAFT_REFRESH_S", 60, minimum=5)),
    },
    # Catches what no signal announces (a scheduled price taking effect) and reissues a bundle
    # before it expires; a compile equal to the latest bundle signs nothing.
    "publish-policy-bundle": {
        "task": "fleet.tasks.publish_bundle_task",
        "schedule": float(env_int("OUTPOST_BUNDLE_CHECK_S", 30, minimum=1)),
        "args": (["periodic check"],),
    },
    # Every compliance check, daily (and after relevant changes: fleet/signals.py). An
    # interval, not a time of day: beat runs it when it first starts, then every period.
    "run-compliance-checks": {
        "task": "fleet.tasks.run_compliance_task",
        "schedule": float(env_int("OUTPOST_COMPLIANCE_INTERVAL_S", 24 * 3600, minimum=60)),
        "kwargs": {"trigger": "schedule"},
    },
}

# --- outside services -------------------------------------------------------------------------
# Spending alerts are emailed (billing/alerts.py). Development prints them in the worker's log;
# production sets an SMTP backend and its EMAIL_HOST_* settings.
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Outpost <billing@outpost.invalid>")
PROMETHEUS_URL = env_url("PROMETHEUS_URL")
STRIPE_API_KEY = env_str("STRIPE_API_KEY")
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET")
# Where the Stripe API is (tests point it at tests/fakestripe.py); None: Stripe's own.
STRIPE_API_BASE = env_url("STRIPE_API_BASE")
if STRIPE_API_KEY and not STRIPE_WEBHOOK_SECRET:
    raise ImproperlyConfigured("STRIPE_WEBHOOK_SECRET is required when STRIPE_API_KEY is set")

# --- Outpost ----------------------------------------------------------------------------------
# The console's Ed25519 key (base64 of the 32 raw bytes) signs bundles and tokens; nodes pin
# its public half at enrollment. In development a key is generated under VAR_DIR.
OUTPOST_SIGNING_KEY = env_str("OUTPOST_SIGNING_KEY")
if OUTPOST_SIGNING_KEY is None and not DEBUG:
    raise ImproperlyConfigured(
        "OUTPOST_SIGNING_KEY is required when DJANGO_DEBUG=false "
        "(create one with `python manage.py signing_key`)"
    )
OUTPOST_HEARTBEAT_INTERVAL_S = env_int("OUTPOST_HEARTBEAT_INTERVAL_S", 5, minimum=1)
# A node is online while its last heartbeat is at most this old, degraded up to the offline
# threshold, offline beyond it (fleet.models.NodeQuerySet relies on both).
OUTPOST_NODE_ONLINE_AFTER_S = env_int("OUTPOST_NODE_ONLINE_AFTER_S", 15, minimum=1)
OUTPOST_NODE_OFFLINE_AFTER_S = env_int("OUTPOST_NODE_OFFLINE_AFTER_S", 60, minimum=2)
if OUTPOST_NODE_OFFLINE_AFTER_S <= OUTPOST_NODE_ONLINE_AFTER_S:
    raise ImproperlyConfigured(
        "OUTPOST_NODE_OFFLINE_AFTER_S must exceed OUTPOST_NODE_ONLINE_AFTER_S"
    )
OUTPOST_ENROLLMENT_TOKEN_TTL_H = env_int("OUTPOST_ENROLLMENT_TOKEN_TTL_H", 24, minimum=1)
# Default and longest lifetime of a tenant's ephemeral token (billing/api.py); the shortest is
# 30 s (inference.protocol.TOKEN_MIN_TTL_S).
OUTPOST_TOKEN_TTL_S = env_int("OUTPOST_TOKEN_TTL_S", 600, minimum=30)
OUTPOST_SAMPLE_RETENTION_H = env_int("OUTPOST_SAMPLE_RETENTION_H", 72, minimum=1)
# The model registry: where uploaded artifacts are kept (by sha256), how large one may be, and
# the newest ONNX opset the fleet's onnxruntime runs (1.19+ runs opset 21).
OUTPOST_ARTIFACT_DIR = Path(env_str("OUTPOST_ARTIFACT_DIR", str(VAR_DIR / "artifacts")))
OUTPOST_MAX_MODEL_BYTES = env_int("OUTPOST_MAX_MODEL_BYTES", 512 * 2**20, minimum=1024)
OUTPOST_MAX_OPSET = env_int("OUTPOST_MAX_OPSET", 21, minimum=7)
# The share of a node's memory (from its class) that console-managed model versions may take;
# the rest is for the agent, the OS and requests in flight.
OUTPOST_NODE_MODEL_MEMORY_SHARE = env_float(
    "OUTPOST_NODE_MODEL_MEMORY_SHARE", 0.75, lo=0.05, hi=1.0
)
# Grading thresholds (per grade: FLOPs and memory bounds, p95 target) as JSON; unset means
# fleet.grading.DEFAULT_THRESHOLDS. Checked at start by a system check (fleet/checks.py).
OUTPOST_GRADING = env_json("OUTPOST_GRADING")
# Drift of a version's outputs from its baseline (fleet.drift.DriftSettings: threshold,
# sustained_minutes, min_rows, baseline_minutes) as JSON; unset means the defaults there.
OUTPOST_DRIFT = env_json("OUTPOST_DRIFT")
# Per-minute output summaries are kept this long.
OUTPOST_DRIFT_RETENTION_H = env_int("OUTPOST_DRIFT_RETENTION_H", 24 * 7, minimum=1)
# Policy bundles: how long a node may enforce one (the console reissues at half of it), the
# next console public key nodes should trust ahead of a key rotation (base64, see
# docs/decisions.md), and how long the routing decisions nodes report are kept.
OUTPOST_BUNDLE_TTL_S = env_int("OUTPOST_BUNDLE_TTL_S", 24 * 3600, minimum=120)
OUTPOST_NEXT_PUBLIC_KEY = env_str("OUTPOST_NEXT_PUBLIC_KEY")
if OUTPOST_NEXT_PUBLIC_KEY:
    try:
        _public_key_from_b64(OUTPOST_NEXT_PUBLIC_KEY)
    except ValueError as _exc:
        raise ImproperlyConfigured(f"OUTPOST_NEXT_PUBLIC_KEY: {_exc}") from None
# The share of the regional premium a quality credit returns when the tenant's own quality
# objective sent a request to the pool, for tenants on no latency band (bands set their own).
OUTPOST_TENANT_QUALITY_CREDIT_SHARE = Decimal(
    str(env_float("OUTPOST_TENANT_QUALITY_CREDIT_SHARE", 0.5, lo=0.0, hi=1.0))
)
OUTPOST_DECISION_RETENTION_H = env_int("OUTPOST_DECISION_RETENTION_H", 72, minimum=1)
# Compliance checks (fleet/compliance.py, docs/compliance.md): a node may enforce an older
# bundle than the newest for this long; API keys and node credentials are due for rotation
# after these many days; node endpoints must be https:// (production: on by default). After a
# relevant change, a run follows this many seconds later, one for a burst of changes.
OUTPOST_POLICY_MAX_STALENESS_S = env_int("OUTPOST_POLICY_MAX_STALENESS_S", 600, minimum=10)
OUTPOST_API_KEY_ROTATION_DAYS = env_int("OUTPOST_API_KEY_ROTATION_DAYS", 90, minimum=1)
OUTPOST_NODE_CREDENTIAL_ROTATION_DAYS = env_int(
    "OUTPOST_NODE_CREDENTIAL_ROTATION_DAYS", 90, minimum=1
)
OUTPOST_REQUIRE_NODE_TLS = env_bool("OUTPOST_REQUIRE_NODE_TLS", not DEBUG)
OUTPOST_COMPLIANCE_DEBOUNCE_S = env_int("OUTPOST_COMPLIANCE_DEBOUNCE_S", 30, minimum=0)
# Uploads of up to this size stay in memory; larger ones spool to a temporary file.
FILE_UPLOAD_MAX_MEMORY_SIZE = 8 * 2**20
# The URL nodes use to reach the console, shown in the enrollment command.
OUTPOST_PUBLIC_URL = env_url("OUTPOST_PUBLIC_URL") or "http://127.0.0.1:8000"

# The metrics store (fleet/observability): a Prometheus server scraping the agents, read with
# prometheus-api-client; unset, the console's own usage rollups and heartbeat samples.
PROMETHEUS_URL = env_url("PROMETHEUS_URL")
# The scrape targets file (Prometheus file_sd) the console writes from its fleet registry.
OUTPOST_PROMETHEUS_TARGETS_FILE = Path(
    env_str("OUTPOST_PROMETHEUS_TARGETS_FILE", str(VAR_DIR / "prometheus" / "outpost-nodes.json"))
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("OUTPOST_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # The filesystem transport has no host; kombu warns about it on every connection.
        "kombu.connection": {"level": "ERROR"},
        # One line per request of the SDK and the node client; their failures are logged
        # by the callers.
        "httpx": {"level": "WARNING"},
    },
}
