from django.urls import path

from fleet import views

app_name = "fleet"
urlpatterns = [
    path("", views.nodes, name="nodes"),
    path("nodes/<slug:uid>/", views.node, name="node"),
    path("nodes/<slug:uid>/simulation/", views.simulate_temperature, name="simulate_temperature"),
    path("nodes/<slug:uid>/credential/", views.rotate_credential, name="rotate_credential"),
    path("enroll/", views.enroll, name="enroll"),
]
