from django.urls import path

from billing import views

app_name = "finance"
urlpatterns = [
    path("accounts/", views.accounts, name="accounts"),
    path("prices/", views.prices, name="prices"),
    path("prices/<int:pk>/delete/", views.delete_price, name="delete_price"),
]
