import numpy as np
import pytest

from embeddings.cache import PUBLIC_SCOPE, cache_lookup, cache_upsert, text_key
from embeddings.models import CachedEmbedding

pytestmark = pytest.mark.django_db
M, V = "all-MiniLM-L6-v2", "v-test"


def _vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(8).astype(np.float32)


def test_upsert_then_lookup_round_trips_float32():
    k = text_key("hello")
    assert cache_upsert(model=M, version=V, scope=7, rows=[(k, 3, _vec(1))]) == 1
    hits = cache_lookup(model=M, version=V, keys=[k], scopes=[7])
    np.testing.assert_array_equal(hits[k].vector, _vec(1))
    assert hits[k].tokens == 3


def test_upsert_is_idempotent():
    k = text_key("same")
    cache_upsert(model=M, version=V, scope=7, rows=[(k, 3, _vec(1))])
    assert cache_upsert(model=M, version=V, scope=7, rows=[(k, 3, _vec(2))]) == 0
    assert CachedEmbedding.objects.filter(model=M).count() == 1
    np.testing.assert_array_equal(cache_lookup(model=M, version=V, keys=[k], scopes=[7])[k].vector, _vec(1))


def test_scopes_isolate_tenants_and_share_public():
    alice_only, public = text_key("alice's"), text_key("everyone's")
    cache_upsert(model=M, version=V, scope=1, rows=[(alice_only, 1, _vec(1))])
    cache_upsert(model=M, version=V, scope=PUBLIC_SCOPE, rows=[(public, 1, _vec(2))])
    keys = [alice_only, public]
    assert set(cache_lookup(model=M, version=V, keys=keys, scopes=[1, PUBLIC_SCOPE])) == set(keys)
    assert set(cache_lookup(model=M, version=V, keys=keys, scopes=[2, PUBLIC_SCOPE])) == {public}
    assert set(cache_lookup(model=M, version=V, keys=keys, scopes=[PUBLIC_SCOPE])) == {public}


def test_model_and_version_are_part_of_the_key():
    k = text_key("x")
    cache_upsert(model=M, version=V, scope=1, rows=[(k, 1, _vec(1))])
    assert cache_lookup(model=M, version="other", keys=[k], scopes=[1]) == {}
    assert cache_lookup(model="other", version=V, keys=[k], scopes=[1]) == {}


def test_keys_hash_any_unicode_without_raising():
    assert len(text_key("a\x00b")) == 32
    assert len(text_key("\ud800 lone surrogate")) == 32
    assert text_key("a") != text_key("a ")


def test_served_lookups_use_the_hot_tier_and_keep_scopes_apart(django_assert_num_queries):
    from embeddings.cache import cache_lookup_served

    mine, public = text_key("mine"), text_key("public")
    cache_upsert(model=M, version=V, scope=7, rows=[(mine, 3, _vec(1))])
    cache_upsert(model=M, version=V, scope=PUBLIC_SCOPE, rows=[(public, 4, _vec(2))])
    with django_assert_num_queries(1):
        assert set(cache_lookup_served(model=M, version=V, keys=[mine, public], scopes=[7, PUBLIC_SCOPE])) == {mine, public}
    with django_assert_num_queries(0):  # both now in this process's hot tier
        hits = cache_lookup_served(model=M, version=V, keys=[mine, public], scopes=[7, PUBLIC_SCOPE])
    np.testing.assert_array_equal(hits[mine].vector, _vec(1))
    assert hits[public].tokens == 4
    # Tenant 8 may read the public entry from memory, never tenant 7's.
    assert set(cache_lookup_served(model=M, version=V, keys=[mine, public], scopes=[8, PUBLIC_SCOPE])) == {public}
    # Another model version is another key.
    assert cache_lookup_served(model=M, version="v-other", keys=[mine], scopes=[7]) == {}


def test_the_hot_tier_stays_within_its_budget_least_recently_used_out():
    from embeddings.cache import Hit
    from embeddings.hotcache import _OVERHEAD, HotCache

    entry = 32 + _OVERHEAD  # an 8-dim float32 vector and its bookkeeping
    hot = HotCache(max_bytes=3 * entry)
    keys = [text_key(str(i)) for i in range(4)]
    hot.put_many(M, V, [(k, 7, Hit(_vec(i), 1, 7)) for i, k in enumerate(keys[:3])])
    assert set(hot.get_many(M, V, [7], [keys[0]])) == {keys[0]}  # 0 is now the most recent
    hot.put_many(M, V, [(keys[3], 7, Hit(_vec(3), 1, 7))])
    assert len(hot) == 3 and hot.bytes == 3 * entry
    assert set(hot.get_many(M, V, [7], keys)) == {keys[0], keys[2], keys[3]}  # 1 was the least recent
    assert HotCache(max_bytes=0).get_many(M, V, [7], keys) == {}
