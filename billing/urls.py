from django.urls import path

from billing import views

app_name = "portal"
urlpatterns = [
    path("", views.portal_index, name="index"),
    path("<slug:tenant>/", views.portal_home, name="home"),
    path("<slug:tenant>/keys/", views.api_keys, name="api_keys"),
    path("<slug:tenant>/keys/<int:pk>/revoke/", views.revoke_api_key, name="revoke_api_key"),
]
