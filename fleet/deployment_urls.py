"""The deployment pages, mounted by console/urls.py under /fleet/deployments/."""

from django.urls import path

from fleet import deployment_views

app_name = "deployments"
urlpatterns = [
    path("", deployment_views.deployments, name="list"),
    path("new/", deployment_views.new, name="new"),
    path("<int:pk>/", deployment_views.detail, name="detail"),
    path("<int:pk>/pause/", deployment_views.act, {"action": "pause"}, name="pause"),
    path("<int:pk>/resume/", deployment_views.act, {"action": "resume"}, name="resume"),
    path("<int:pk>/promote/", deployment_views.act, {"action": "promote"}, name="promote"),
    path("<int:pk>/roll-back/", deployment_views.act, {"action": "roll_back"}, name="roll_back"),
    path("<int:pk>/pins/", deployment_views.pin_tenant, name="pin"),
    path("<int:pk>/pins/<slug:tenant>/unpin/", deployment_views.unpin_tenant, name="unpin"),
]
