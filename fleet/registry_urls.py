"""The model registry's pages, mounted twice by console/urls.py: for operators under
/fleet/models/ (namespace "registry") and in a tenant's portal under
/portal/<tenant>/models/ (namespace "portal_models")."""

from django.urls import path

from fleet import registry_views

operator_urlpatterns = [
    path("", registry_views.models, name="models"),
    path("<int:pk>/", registry_views.version, name="version"),
]

# Each view receives the tenant's slug from the mount point (portal/<slug:tenant>/models/).
portal_urlpatterns = [
    path("", registry_views.portal_models, name="models"),
    path("<int:pk>/", registry_views.portal_version, name="version"),
]
