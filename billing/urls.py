from django.urls import path

from billing import audit_views, portal_views, views

app_name = "portal"
urlpatterns = [
    path("", views.portal_index, name="index"),
    path("<slug:tenant>/", views.portal_home, name="home"),
    path("<slug:tenant>/billing/", portal_views.billing_home, name="billing"),
    path("<slug:tenant>/invoices/<int:pk>/", portal_views.invoice_detail, name="invoice"),
    path("<slug:tenant>/invoices/<int:pk>/pdf/", portal_views.invoice_download, name="invoice_pdf"),
    path("<slug:tenant>/export/", portal_views.portal_export, name="export"),
    path("<slug:tenant>/addons/<slug:slug>/", portal_views.switch_addon, name="switch_addon"),
    path("<slug:tenant>/band/", portal_views.change_band_view, name="change_band"),
    path("<slug:tenant>/keys/", views.api_keys, name="api_keys"),
    path("<slug:tenant>/keys/<int:pk>/revoke/", views.revoke_api_key, name="revoke_api_key"),
    path("<slug:tenant>/audit/", audit_views.portal_audit, name="audit"),
]
