from django.urls import path

from billing import views

app_name = "finance"
urlpatterns = [
    path("accounts/", views.accounts, name="accounts"),
]
