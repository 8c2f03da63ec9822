from django import forms
from django.db import transaction
from django.utils import timezone

from billing import audit
from billing.choices import AuditCategory
from billing.models import Price


class ApiKeyForm(forms.Form):
    name = forms.CharField(
        max_length=100, help_text="What the key is for, e.g. 'checkout service (production)'"
    )


class PriceForm(forms.ModelForm):
    """Schedule a price. The one place prices are taken in: the prices page and the API
    (billing.prices_api.schedule_price) both go through it; the rules themselves (not in
    the past, not negative, one per key and time) are the model's."""

    effective_from = forms.DateTimeField(
        required=False,
        label="Effective from (UTC)",
        help_text="Leave empty for now. A time in the past is refused.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )

    class Meta:
        model = Price
        fields = ["grade", "serving", "currency", "per_1000", "effective_from", "note"]
        labels = {"per_1000": "Price per 1,000 inferences"}
        error_messages = {
            "grade": {"invalid_choice": "There is no grade “%(value)s” (tiny, medium or large)."},
            "serving": {"invalid_choice": "Serving is local or regional, not “%(value)s”."},
        }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["per_1000"].widget.attrs["step"] = "0.000001"
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

    def clean_currency(self) -> str:
        return self.cleaned_data["currency"].strip().upper()

    def clean_effective_from(self):
        # Empty means now; the model moves a time of "just now" to the moment of saving.
        return self.cleaned_data["effective_from"] or timezone.now()

    def schedule(self, *, created_by) -> Price:
        """Save the price with its audit entry; `before` there is the price it takes over
        from (None for a first price)."""
        price = self.save(commit=False)
        price.created_by = created_by
        with transaction.atomic():
            price.save()
            previous = price.superseded()
            audit.record(
                "price.created",
                category=AuditCategory.MONEY,
                actor=created_by,
                subject=price,
                before=previous.snapshot() if previous is not None else None,
                after=price.snapshot(),
            )
        return price
