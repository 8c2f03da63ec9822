import django_filters
from django.db.models import Q

from billing.choices import PriceGrade, Serving
from billing.models import Price, Tenant


class TenantFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(method="search", label="Search")
    currency = django_filters.ChoiceFilter(choices=[], empty_label="Any currency", label="Currency")

    class Meta:
        model = Tenant
        fields = ["currency"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        currencies = Tenant.objects.order_by("currency").values_list("currency", flat=True)
        self.filters["currency"].extra["choices"] = [(c, c) for c in currencies.distinct()]
        self.form.fields["q"].widget.attrs.update(
            {"class": "form-control", "placeholder": "name or slug", "type": "search"}
        )
        self.form.fields["currency"].widget.attrs["class"] = "form-select"

    def search(self, queryset, name, value):
        return queryset.filter(Q(name__icontains=value) | Q(slug__icontains=value))


class PriceFilter(django_filters.FilterSet):
    grade = django_filters.ChoiceFilter(choices=PriceGrade.choices, empty_label="Any grade")
    serving = django_filters.ChoiceFilter(choices=Serving.choices, empty_label="Any serving")
    currency = django_filters.ChoiceFilter(choices=[], empty_label="Any currency", label="Currency")

    class Meta:
        model = Price
        fields = ["grade", "serving", "currency"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        currencies = Price.objects.order_by("currency").values_list("currency", flat=True)
        self.filters["currency"].extra["choices"] = [(c, c) for c in currencies.distinct()]
        for field in self.form.fields.values():
            field.widget.attrs["class"] = "form-select"
