"""The compliance pages, mounted at /fleet/compliance/ by console/urls.py (namespace
"compliance")."""

from django.urls import path

from fleet import compliance_views

app_name = "compliance"
urlpatterns = [
    path("", compliance_views.findings, name="findings"),
    path("export.csv", compliance_views.export, name="export"),
    path("run/", compliance_views.run_now, name="run"),
    path("<int:pk>/", compliance_views.finding, name="finding"),
]
