"""Filters of the fleet list pages (django-filter), declared like the tables they feed."""

from __future__ import annotations

import django_filters
from django.db.models import Q, QuerySet

from fleet.choices import NodeStatus
from fleet.models import Node, NodeClass, Region


class NodeFilterSet(django_filters.FilterSet):
    """Filters `Node.objects.with_status()`; `status` needs that annotation."""

    q = django_filters.CharFilter(method="search", label="Search")
    # Codes and names in the address (?region=eu-west&node_class=nano), not primary keys, so
    # a filtered list can be shared as a link.
    region = django_filters.ModelChoiceFilter(
        queryset=Region.objects.all(), to_field_name="code", empty_label="All regions"
    )
    node_class = django_filters.ModelChoiceFilter(
        queryset=NodeClass.objects.all(),
        to_field_name="name",
        empty_label="All classes",
        label="Node class",
    )
    status = django_filters.ChoiceFilter(
        field_name="current_status", choices=NodeStatus.choices, empty_label="Any status"
    )

    class Meta:
        model = Node
        fields = ["q", "region", "node_class", "status"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        q = self.form.fields["q"]
        q.widget.attrs.update(
            {"class": "form-control", "placeholder": "Name, uid or hostname", "type": "search"}
        )
        for name in ("region", "node_class", "status"):
            self.form.fields[name].widget.attrs["class"] = "form-select"

    def search(self, queryset: QuerySet[Node], name: str, value: str) -> QuerySet[Node]:
        value = value.strip()
        if not value:
            return queryset
        return queryset.filter(
            Q(name__icontains=value) | Q(uid__icontains=value) | Q(hostname__icontains=value)
        )
