from django.http import HttpResponse

from billing.roles import operator_required


@operator_required
def home(request):
    return HttpResponse("Outpost")
