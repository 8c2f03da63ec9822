"""The portal's SLO page, mounted by console/urls.py under /portal/<tenant>/slo/ (namespace
"portal_slo"); the view receives the tenant's slug from the mount point."""

from django.urls import path

from fleet import slo_views

portal_urlpatterns = [
    path("", slo_views.portal_slo, name="slo"),
]
