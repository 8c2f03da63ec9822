"""Forms of the fleet pages."""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.conf import settings

from fleet.models import EnrollmentToken, Node, NodeClass, Region

# The longest an enrollment token may live: a month, as the API allows (fleet.schemas).
MAX_TOKEN_TTL_H = 24 * 30


class BootstrapForm(forms.Form):
    """Widgets carry Bootstrap 5 classes, and fields with errors are marked invalid."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            css = "form-select" if isinstance(field.widget, forms.Select) else "form-control"
            field.widget.attrs.setdefault("class", css)

    def full_clean(self) -> None:
        super().full_clean()
        for name in self.errors:
            if name in self.fields:
                widget = self.fields[name].widget
                widget.attrs["class"] = f"{widget.attrs.get('class', '')} is-invalid".strip()
                widget.attrs["aria-invalid"] = "true"


class EnrollForm(BootstrapForm):
    """The one place enrollment tokens are validated: the page and the API
    (fleet.api.create_enrollment_token) both go through it."""

    node_name = forms.CharField(
        max_length=100,
        label="Node name",
        help_text="How the node appears in the console, e.g. fra-edge-07. Must be unique.",
    )
    region = forms.ModelChoiceField(
        queryset=Region.objects.all(),
        to_field_name="code",
        error_messages={"invalid_choice": "There is no region “%(value)s”."},
    )
    node_class = forms.ModelChoiceField(
        queryset=NodeClass.objects.all(),
        to_field_name="name",
        label="Node class",
        error_messages={"invalid_choice": "There is no node class “%(value)s”."},
    )
    expires_in_hours = forms.IntegerField(
        min_value=1,
        max_value=MAX_TOKEN_TTL_H,
        label="Token expires in (hours)",
        help_text=f"1 to {MAX_TOKEN_TTL_H} hours. The token works once, within this time.",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["expires_in_hours"].initial = settings.OUTPOST_ENROLLMENT_TOKEN_TTL_H
        self.fields["region"].empty_label = "Choose a region"
        self.fields["node_class"].empty_label = "Choose a class"

    def clean_node_name(self) -> str:
        name = self.cleaned_data["node_name"].strip()
        # Case-insensitive: "Edge-1" beside "edge-1" would be legal but only confuse people.
        clash = Node.objects.filter(name__iexact=name).values_list("name", flat=True).first()
        if clash is not None:
            raise forms.ValidationError(
                f"A node named “{clash}” is already enrolled. Choose another name."
            )
        return name

    def issue(self, *, created_by) -> tuple[EnrollmentToken, str]:
        """Issue the token; returns it and its secret, which is not stored anywhere."""
        return EnrollmentToken.issue(
            node_name=self.cleaned_data["node_name"],
            region=self.cleaned_data["region"],
            node_class=self.cleaned_data["node_class"],
            created_by=created_by,
            ttl=timedelta(hours=self.cleaned_data["expires_in_hours"]),
        )


class ChartRangeForm(forms.Form):
    """The time range of the node page's charts (?range=6h)."""

    RANGES = {"1h": timedelta(hours=1), "6h": timedelta(hours=6), "24h": timedelta(hours=24)}
    DEFAULT = "1h"

    range = forms.ChoiceField(choices=[(key, key) for key in RANGES], required=False)

    @property
    def key(self) -> str:
        if self.is_valid() and self.cleaned_data["range"]:
            return self.cleaned_data["range"]
        return self.DEFAULT

    @property
    def window(self) -> timedelta:
        return self.RANGES[self.key]
