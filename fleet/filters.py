"""Filters of the fleet list pages (django-filter), declared like the tables they feed."""

from __future__ import annotations

import django_filters
from django import forms
from django.db.models import Q, QuerySet

from billing.models import Tenant
from fleet.choices import (
    DecisionAction,
    DeploymentState,
    Grade,
    NodeStatus,
    PrivacyMode,
    Severity,
    VersionStatus,
)
from fleet.compliance import CHECKS
from fleet.models import (
    ComplianceFinding,
    DecisionLog,
    Deployment,
    Model,
    ModelVersion,
    Node,
    NodeClass,
    Region,
    TenantPolicy,
)


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
        field_name="current_status",
        choices=NodeStatus.choices,
        empty_label="Any status",
        label="Status",
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


CATALOGUE = "catalogue"


class ModelVersionFilterSet(django_filters.FilterSet):
    """Filters the registry's versions. `tenant` scopes the owner choices to what that tenant
    may see (its own models and the catalogue); without it, an operator chooses among the
    catalogue and every tenant that owns a model."""

    q = django_filters.CharFilter(method="search", label="Search")
    # The owner's slug in the address (?owner=acme), or ?owner=catalogue.
    owner = django_filters.ChoiceFilter(
        method="filter_owner", empty_label="Any owner", label="Owner"
    )
    grade = django_filters.ChoiceFilter(
        choices=Grade.choices, empty_label="Any grade", label="Grade"
    )
    status = django_filters.ChoiceFilter(
        choices=VersionStatus.choices, empty_label="Any status", label="Status"
    )

    class Meta:
        model = ModelVersion
        fields = ["q", "owner", "grade", "status"]

    def __init__(self, *args, tenant: Tenant | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        owners = self.form.fields["owner"]
        # The field adds its empty choice ("any owner") itself, when the choices are set.
        if tenant is not None:
            owners.choices = [(tenant.slug, "Yours"), (CATALOGUE, "Catalogue")]
        else:
            tenants = Tenant.objects.filter(models__isnull=False).distinct().order_by("slug")
            owners.choices = [
                (CATALOGUE, "Catalogue"),
                *((slug, slug) for slug in tenants.values_list("slug", flat=True)),
            ]
        self.form.fields["q"].widget.attrs.update(
            {"class": "form-control", "placeholder": "Model name", "type": "search"}
        )
        for name in ("owner", "grade", "status"):
            self.form.fields[name].widget.attrs["class"] = "form-select"

    def search(self, queryset: QuerySet[ModelVersion], name: str, value: str):
        value = value.strip()
        if not value:
            return queryset
        # "acme/churn", as the list shows a tenant's model, finds it too.
        owner, _, model_name = value.rpartition("/")
        if owner:
            queryset = queryset.filter(model__owner__slug__iexact=owner)
        return queryset.filter(model__name__icontains=model_name)

    def filter_owner(self, queryset: QuerySet[ModelVersion], name: str, value: str):
        if value == CATALOGUE:
            return queryset.filter(model__owner__isnull=True)
        return queryset.filter(model__owner__slug=value)


class DeploymentFilterSet(django_filters.FilterSet):
    """Filters the deployments list by state and by model. The model is named in the address
    as the list writes it (?model=acme/churn, or ?model=sentiment for a catalogue model)."""

    state = django_filters.ChoiceFilter(
        choices=DeploymentState.choices, empty_label="Any state", label="State"
    )
    model = django_filters.ChoiceFilter(
        method="filter_model", empty_label="Any model", label="Model"
    )

    class Meta:
        model = Deployment
        fields = ["state", "model"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Only models that have been deployed: one query, whatever the number of deployments.
        deployed = (
            Model.objects.filter(versions__deployments__isnull=False)
            .distinct()
            .select_related("owner")
            .order_by("owner__slug", "name")
        )
        self.form.fields["model"].choices = [(str(m), str(m)) for m in deployed]
        for name in ("state", "model"):
            self.form.fields[name].widget.attrs["class"] = "form-select"

    def filter_model(self, queryset: QuerySet[Deployment], name: str, value: str):
        owner, _, model_name = value.rpartition("/")
        if owner:
            queryset = queryset.filter(version__model__owner__slug=owner)
        else:
            queryset = queryset.filter(version__model__owner__isnull=True)
        return queryset.filter(version__model__name=model_name)


class TenantPolicyFilterSet(django_filters.FilterSet):
    """Filters the operator's list of tenant policies by tenant and privacy mode."""

    q = django_filters.CharFilter(method="search", label="Tenant")
    privacy_mode = django_filters.ChoiceFilter(
        choices=PrivacyMode.choices, empty_label="Any privacy mode", label="Privacy mode"
    )

    class Meta:
        model = TenantPolicy
        fields = ["q", "privacy_mode"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.form.fields["q"].widget.attrs.update(
            {"class": "form-control", "placeholder": "Slug or name", "type": "search"}
        )
        self.form.fields["privacy_mode"].widget.attrs["class"] = "form-select"

    def search(self, queryset: QuerySet[TenantPolicy], name: str, value: str):
        value = value.strip()
        if not value:
            return queryset
        return queryset.filter(Q(tenant__slug__icontains=value) | Q(tenant__name__icontains=value))


class DecisionLogFilterSet(django_filters.FilterSet):
    """Filters the routing decisions nodes reported: a request id finds every node's
    decision about that request; the rest narrow by who, where, what and when. Names in the
    address are the ones the nodes report (?tenant=acme&node=<uid>&rule=thermal)."""

    request_id = django_filters.CharFilter(label="Request id")
    tenant = django_filters.CharFilter(label="Tenant")
    node = django_filters.ModelChoiceFilter(
        queryset=Node.objects.order_by("name"), to_field_name="uid", empty_label="Any node"
    )
    action = django_filters.ChoiceFilter(
        choices=DecisionAction.choices, empty_label="Any action", label="Action"
    )
    rule = django_filters.CharFilter(label="Rule")
    since = django_filters.IsoDateTimeFilter(
        field_name="at",
        lookup_expr="gte",
        label="From (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )
    until = django_filters.IsoDateTimeFilter(
        field_name="at",
        lookup_expr="lt",
        label="Until (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )

    class Meta:
        model = DecisionLog
        fields = ["request_id", "tenant", "node", "action", "rule", "since", "until"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        placeholders = {
            "request_id": "the request's id",
            "tenant": "slug",
            "rule": "e.g. thermal",
        }
        for name, field in self.form.fields.items():
            css = "form-select" if name in ("node", "action") else "form-control"
            field.widget.attrs["class"] = css
            if name in placeholders:
                field.widget.attrs.update(
                    {"placeholder": placeholders[name], "spellcheck": "false"}
                )


def _region_choices() -> list[tuple[str, str]]:
    return [(code, code) for code in Region.objects.values_list("code", flat=True)]


class ComplianceFindingFilterSet(django_filters.FilterSet):
    """Filters the compliance findings: by check, severity, open or resolved, tenant, region,
    and words of the subject, what was found or how to fix it. Names in the address are the
    checks' ids, slugs and region codes (?check=residency.traffic&tenant=acme&status=open)."""

    check = django_filters.ChoiceFilter(
        field_name="check_id",
        choices=[(check.id, check.id) for check in CHECKS],
        empty_label="Any check",
        label="Check",
    )
    severity = django_filters.ChoiceFilter(
        choices=Severity.choices, empty_label="Any severity", label="Severity"
    )
    status = django_filters.ChoiceFilter(
        choices=(("open", "Open"), ("resolved", "Resolved")),
        method="by_status",
        empty_label="Open or resolved",
        label="Status",
    )
    tenant = django_filters.ModelChoiceFilter(
        queryset=Tenant.objects.order_by("slug"), to_field_name="slug", empty_label="Any tenant"
    )
    region = django_filters.ChoiceFilter(
        choices=_region_choices, empty_label="Any region", label="Region"
    )
    q = django_filters.CharFilter(method="search", label="Search")

    class Meta:
        model = ComplianceFinding
        fields = ["check", "severity", "status", "tenant", "region", "q"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name, field in self.form.fields.items():
            field.widget.attrs["class"] = "form-control" if name == "q" else "form-select"
        self.form.fields["q"].widget.attrs.update(
            {"placeholder": "Subject, finding or fix", "type": "search"}
        )

    def by_status(self, queryset, name: str, value: str):
        return queryset.open() if value == "open" else queryset.resolved()

    def search(self, queryset, name: str, value: str):
        value = value.strip()
        if not value:
            return queryset
        return queryset.filter(
            Q(subject__icontains=value)
            | Q(subject_key__icontains=value)
            | Q(message__icontains=value)
            | Q(fix__icontains=value)
        )
