from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from billing.webhooks import stripe_webhook
from console import views
from console.api import api
from fleet import bundle_urls, deployment_urls, policy_urls, slo_urls
from fleet.registry_urls import operator_urlpatterns, portal_urlpatterns

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(template_name="console/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("fleet/models/", include((operator_urlpatterns, "registry"))),
    path("fleet/deployments/", include(deployment_urls)),
    path("fleet/policies/", include(policy_urls)),
    path("fleet/bundles/", include(bundle_urls)),
    path("fleet/decisions/", include((bundle_urls.decision_urlpatterns, "decisions"))),
    path("fleet/compliance/", include("fleet.compliance_urls")),
    path("fleet/observability/", include("fleet.dashboard_urls")),
    path("fleet/", include("fleet.urls")),
    path("portal/<slug:tenant>/models/", include((portal_urlpatterns, "portal_models"))),
    path(
        "portal/<slug:tenant>/policy/", include((policy_urls.portal_urlpatterns, "portal_policy"))
    ),
    path("portal/<slug:tenant>/slo/", include((slo_urls.portal_urlpatterns, "portal_slo"))),
    path("portal/", include("billing.urls")),
    path("finance/margins/", views.margins, name="margins"),
    path("finance/", include("billing.finance_urls")),
    path("audit/", include("billing.audit_urls")),
    path("billing/stripe/webhook", stripe_webhook, name="stripe_webhook"),
    path("api/v1/", api.urls),
    path("admin/", admin.site.urls),
]
