"""OpenAPI links: how one answer feeds the next request (sign-up -> login -> keys and providers,
a created provider, key or job -> its own operations).

They document the flows in /api/docs (Swagger UI shows them under each response) and drive the
stateful fuzz (tests/test_openapi.py). The credentials they name (`access`, `api_key`) go in
`Authorization: Bearer ...`, which OpenAPI links cannot set; the links say so in words.

A drf-spectacular postprocessing hook (SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]); a link
whose source or target operation is missing is left out, so an operation renamed elsewhere never
breaks the schema (tests/test_openapi.py checks that every link below is present).
"""

from __future__ import annotations

from typing import Any

# (source operationId, status) -> {link name: link object}
_ACCESS = "Send the `access` token of this answer as `Authorization: Bearer <access>`."
_ID = {"provider_id": "$response.body#/id"}
_JOB = {"job_id": "$response.body#/id"}

LINKS: dict[tuple[str, str], dict[str, dict]] = {
    ("auth_signup", "201"): {
        "Login": {
            "operationId": "auth_login",
            "requestBody": {"email": "$request.body#/email", "password": "$request.body#/password"},
            "description": "Log in with the email and password just signed up with.",
        },
    },
    ("auth_login", "200"): {
        "Refresh": {"operationId": "auth_refresh", "requestBody": {"refresh": "$response.body#/refresh"},
                    "description": "A new access token from this answer's `refresh` token."},
        "ListKeys": {"operationId": "keys_list", "description": _ACCESS},
        "CreateKey": {"operationId": "keys_create", "description": _ACCESS},
        "ListProviders": {"operationId": "providers_list", "description": _ACCESS},
        "CreateProvider": {"operationId": "providers_create", "description": _ACCESS},
    },
    ("keys_create", "201"): {
        "RevokeKey": {"operationId": "keys_revoke", "parameters": {"path.prefix": "$response.body#/prefix"},
                      "description": "Revoke the key just created (by its prefix)."},
    },
    ("providers_create", "201"): {
        name: {"operationId": op, "parameters": {f"path.{k}": v for k, v in _ID.items()},
               "description": f"{verb} the provider just created."}
        for name, op, verb in (("GetProvider", "providers_retrieve", "Read"),
                               ("UpdateProvider", "providers_update", "Change"),
                               ("TestProvider", "providers_test", "Test"),
                               ("DeleteProvider", "providers_delete", "Delete"))
    },
    ("jobs_create", "202"): {
        name: {"operationId": op, "parameters": {f"path.{k}": v for k, v in _JOB.items()},
               "description": f"{verb} the job just created."}
        for name, op, verb in (("GetJob", "jobs_retrieve", "Poll"),
                               ("GetJobResults", "jobs_results", "Fetch the results of"),
                               ("CancelJob", "jobs_cancel", "Cancel"))
    },
}


def postprocess_links(result: dict[str, Any], generator: object, request: object, public: bool) -> dict[str, Any]:
    """Adds LINKS to the responses they start from."""
    operations = {op.get("operationId"): op for item in result.get("paths", {}).values()
                  for op in item.values() if isinstance(op, dict)}
    for (source, status), links in LINKS.items():
        response = operations.get(source, {}).get("responses", {}).get(status)
        if response is None:
            continue
        present = {name: link for name, link in links.items() if link["operationId"] in operations}
        if present:
            response.setdefault("links", {}).update(present)
    return result
