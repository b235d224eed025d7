"""Who may call what. Managing keys and providers needs a user session (JWT), not an API key."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rest_framework.permissions import BasePermission

from accounts.authentication import is_jwt_request
from embedplatform.errors import JWT_REQUIRED, NotAllowed

if TYPE_CHECKING:
    from rest_framework.request import Request
    from rest_framework.views import APIView


class IsJwtAuthenticated(BasePermission):
    """Allows only JWT-authenticated users that belong to a tenant: a leaked API key cannot mint keys.

    Set `jwt_required_for` on the view to name the thing in the message ("API keys").
    """

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.user is None or not request.user.is_authenticated:
            return False  # DRF answers 401
        if not is_jwt_request(request):
            raise NotAllowed(JWT_REQUIRED.format(what=getattr(view, "jwt_required_for", "this")), code="jwt_required")
        return True
