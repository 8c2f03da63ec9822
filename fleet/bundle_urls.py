"""The policy plane's pages, mounted by console/urls.py: the bundles under /fleet/bundles/
(namespace "bundles") and the decision lookup under /fleet/decisions/ (namespace
"decisions")."""

from django.urls import path

from fleet import bundle_views

app_name = "bundles"
urlpatterns = [
    path("", bundle_views.bundles, name="list"),
    path("publish/", bundle_views.publish, name="publish"),
    path("<int:revision>/", bundle_views.revision, name="revision"),
]

decision_urlpatterns = [
    path("", bundle_views.decisions, name="list"),
]
