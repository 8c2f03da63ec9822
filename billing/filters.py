from datetime import UTC, date, datetime, timedelta

import django_filters
from django.db.models import Q

from billing.choices import ActorKind, AuditCategory, PriceGrade, Serving
from billing.models import AuditEntry, Price, Tenant


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


class AuditEntryFilter(django_filters.FilterSet):
    """The audit log's filters. Dates are UTC days, both ends included; the text searches
    the action, who, what, the note and the values before and after. `tenants=False` for the portal, which is one
    tenant's already."""

    category = django_filters.ChoiceFilter(choices=AuditCategory.choices, empty_label="Any")
    action = django_filters.ChoiceFilter(choices=[], empty_label="Any action")
    actor_kind = django_filters.ChoiceFilter(
        choices=ActorKind.choices, empty_label="Anyone", label="Actor kind"
    )
    actor = django_filters.CharFilter(
        field_name="actor_label", lookup_expr="icontains", label="Actor"
    )
    tenant = django_filters.ModelChoiceFilter(
        queryset=Tenant.objects.order_by("slug"), to_field_name="slug", empty_label="Any tenant"
    )
    since = django_filters.DateFilter(method="filter_since", label="From (UTC day)")
    until = django_filters.DateFilter(method="filter_until", label="To (UTC day)")
    q = django_filters.CharFilter(method="search", label="Search")

    class Meta:
        model = AuditEntry
        fields = ["category", "action", "actor_kind", "actor", "tenant", "since", "until", "q"]

    def __init__(self, *args, tenants: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Set before the form is built from the filters.
        if not tenants:
            del self.filters["tenant"]
        # The actions the rows in scope have (one query), so none offered finds nothing.
        actions = self.queryset.order_by("action").values_list("action", flat=True).distinct()
        self.filters["action"].extra["choices"] = [(a, a) for a in actions]
        for name, field in self.form.fields.items():
            selects = ("category", "action", "actor_kind", "tenant")
            field.widget.attrs["class"] = "form-select" if name in selects else "form-control"
        for name in ("since", "until"):
            self.form.fields[name].widget.input_type = "date"
        self.form.fields["actor"].widget.attrs["placeholder"] = "username or key prefix"
        self.form.fields["q"].widget.input_type = "search"
        self.form.fields["q"].widget.attrs["placeholder"] = "action, subject, value, note"

    def filter_since(self, queryset, name, value):
        return queryset.filter(at__gte=_day_start(value))

    def filter_until(self, queryset, name, value):
        return queryset.filter(at__lt=_day_start(value + timedelta(days=1)))

    def search(self, queryset, name, value):
        return queryset.filter(
            Q(action__icontains=value)
            | Q(actor_label__icontains=value)
            | Q(subject_label__icontains=value)
            | Q(subject_id=value)
            | Q(note__icontains=value)
            | Q(before__icontains=value)
            | Q(after__icontains=value)
        )


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
