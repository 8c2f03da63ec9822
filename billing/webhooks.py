"""Stripe's webhook: verified, deduplicated, applied in one transaction (billing/stripe_sync.py).
Answers 400 to what is not a genuine, fresh Stripe event (Stripe shows it in its dashboard),
503 while Stripe cannot be asked for the invoice's current state (Stripe retries)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing.stripe_gateway import StripeUnavailable, WebhookRejected, parse_webhook
from billing.stripe_sync import handle_event

log = logging.getLogger(__name__)


@csrf_exempt  # Stripe signs the body instead; a browser never posts here.
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    if not settings.STRIPE_WEBHOOK_SECRET:
        return JsonResponse({"error": "Stripe is not configured on this console"}, status=404)
    try:
        event = parse_webhook(
            request.body, request.headers.get("Stripe-Signature"), settings.STRIPE_WEBHOOK_SECRET
        )
    except WebhookRejected as exc:
        log.warning("refused a Stripe webhook: %s", exc.reason)
        return JsonResponse({"error": exc.reason}, status=400)
    try:
        outcome = handle_event(event)
    except StripeUnavailable as exc:
        return JsonResponse({"error": f"cannot reach Stripe to confirm: {exc}"}, status=503)
    return JsonResponse({"received": event.id, "outcome": outcome})
