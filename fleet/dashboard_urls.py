"""The operators' observability dashboards, mounted at /fleet/observability/ by console/urls.py
(namespace "observability"); the SLO burn-rate view is the landing page."""

from django.urls import path

from fleet import dashboard_views

app_name = "observability"
urlpatterns = [
    path("", dashboard_views.slo, name="slo"),
    path("latency/", dashboard_views.latency, name="latency"),
    path("resources/", dashboard_views.resources, name="resources"),
    path("routing/", dashboard_views.routing, name="routing"),
]
