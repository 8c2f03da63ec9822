from django.urls import path

from billing import finance_views, views

app_name = "finance"
urlpatterns = [
    path("accounts/", views.accounts, name="accounts"),
    path("prices/", views.prices, name="prices"),
    path("close/", finance_views.close, name="close"),
    path("close/run/", finance_views.close_action, name="close_action"),
    path("exports/", finance_views.exports, name="exports"),
    path("prices/<int:pk>/delete/", views.delete_price, name="delete_price"),
]
