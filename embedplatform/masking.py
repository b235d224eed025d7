"""How a secret is shown once stored (API answers, the admin): never whole."""

from __future__ import annotations


def secret_mask(plain: str) -> str:
    """What the API and admin show: "sk-...wxyz" (at most 3 leading and 4 trailing characters).

    Short secrets show less, so the mask never reveals more than half of one.
    """
    if not plain:
        return ""
    if len(plain) < 12:
        return "..." + plain[-2:] if len(plain) >= 6 else "..."
    return f"{plain[:3]}...{plain[-4:]}"
