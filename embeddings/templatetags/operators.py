"""Template tags of the operators' admin pages: the work waiting per model (the index's panel and
the workers page) and figures as the pages show them."""

from __future__ import annotations

from typing import Any

from django import template
from redis.exceptions import RedisError

from embeddings.admin_selectors import ModelWork, work_waiting
from embedplatform.charts import number_text

register = template.Library()


@register.inclusion_tag("admin/embeddings/work_table.html")
def work_table(models: list[ModelWork]) -> dict[str, Any]:
    return {"models": models}


@register.inclusion_tag("admin/embeddings/work_panel.html")
def work_panel() -> dict[str, Any]:
    """The admin index's panel: work_waiting() read now; a note instead while Redis is away."""
    try:
        return {"models": work_waiting()}
    except RedisError as exc:
        return {"error": f"Redis is unreachable ({exc.__class__.__name__}): work lists unknown."}


@register.filter
def figure(value: float | int | None) -> str:
    """1,234 or 12.3 (one decimal below 100 where not whole)."""
    if value is None:
        return "-"
    return number_text(round(float(value), 1 if abs(value) < 100 else 0))
