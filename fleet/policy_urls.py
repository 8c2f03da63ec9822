"""The policy pages, mounted by console/urls.py: for operators under /fleet/policies/
(namespace "policies"), and in a tenant's portal under /portal/<tenant>/policy/ (namespace
"portal_policy")."""

from django.urls import path

from fleet import policy_views

app_name = "policies"
urlpatterns = [
    path("", policy_views.policies, name="list"),
    path("tenants/<slug:tenant>/fail-closed/", policy_views.fail_closed, name="fail_closed"),
    path("tenants/<slug:tenant>/rate-limit/", policy_views.rate_limit, name="rate_limit"),
    path("tenants/<slug:tenant>/residency/", policy_views.residency_zone, name="residency"),
    path("simulator/", policy_views.simulator, name="simulator"),
    path("node-classes/<slug:name>/", policy_views.node_class_thresholds, name="node_class"),
    path("pools/<slug:region>/", policy_views.accelerator_pool, name="pool"),
]

# The view receives the tenant's slug from the mount point (portal/<slug:tenant>/policy/).
portal_urlpatterns = [
    path("", policy_views.portal_policy, name="policy"),
]
