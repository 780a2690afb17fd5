from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


@login_required
def home(request: HttpRequest) -> HttpResponse:
    roles = list(request.user.groups.order_by("name").values_list("name", flat=True))
    return render(request, "portal/home.html", {"roles": roles})
