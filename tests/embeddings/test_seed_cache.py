"""manage.py seed_cache: texts pre-computed into the public scope are hits for every tenant."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from embeddings.models import CachedEmbedding

pytestmark = pytest.mark.django_db


def test_seeded_texts_are_hits_for_every_tenant_and_a_rerun_stores_nothing(alice, bob, client_for, redis_db, tmp_path,
                                                                          minilm):
    path = tmp_path / "common.txt"
    path.write_text("how do I reset my password\n\nopening hours\nhow do I reset my password\nrefund policy\n")
    out, err = io.StringIO(), io.StringIO()
    call_command("seed_cache", str(path), "--batch-size", "2", stdout=out, stderr=err)
    assert "Seeded 3 new vectors" in out.getvalue() and "4 texts read" in out.getvalue()
    assert "stored" in err.getvalue()  # progress per batch
    assert CachedEmbedding.objects.filter(scope=0).count() == 3
    for world in (alice, bob):
        body = client_for(world).post("/v1/embeddings", {"model": "all-MiniLM-L6-v2",
                                                          "input": ["opening hours", "refund policy"]}, format="json")
        assert body.status_code == 200 and [d["cached"] for d in body.json()["data"]] == [True, True]
    out = io.StringIO()
    call_command("seed_cache", str(path), stdout=out, stderr=io.StringIO())
    assert "Seeded 0 new vectors" in out.getvalue() and "3 already cached" in out.getvalue()


def test_seed_cache_explains_bad_arguments(tmp_path, tiers):
    with pytest.raises(CommandError, match="Unknown model"):
        call_command("seed_cache", str(tmp_path / "x.txt"), "--model", "nope")
    with pytest.raises(CommandError, match="Cannot read"):
        call_command("seed_cache", str(tmp_path / "missing.txt"))
    with pytest.raises(CommandError, match="No tenant"):
        call_command("seed_cache", str(tmp_path / "x.txt"), "--tenant", "999999")
