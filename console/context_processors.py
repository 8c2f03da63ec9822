from billing.roles import is_auditor, is_finance, is_operator


def roles(request):
    """The navigation shows what the signed-in person's roles allow."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"is_operator": False, "is_finance": False, "is_auditor": False}
    return {
        "is_operator": is_operator(user),
        "is_finance": is_finance(user),
        # The same cached query as is_finance's (billing.roles): no query of its own.
        "is_auditor": is_auditor(user),
    }
