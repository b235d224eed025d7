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
    from embeddings.cache import cache_lookup_served, scope_epoch_learn

    scope_epoch_learn(7, "epoch-1")  # as tenant 7's admission does (see the epoch tests below)
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


def test_a_tenant_scope_is_served_from_memory_only_once_its_epoch_is_known(django_assert_num_queries):
    """Entries kept before this process knew the scope's epoch could predate a DELETE /v1/cache
    it never heard of: a tenant scope is not read from (nor kept in) the hot tier until then."""
    from embeddings.cache import cache_lookup_served, scope_epoch_learn

    mine = text_key("mine")
    cache_upsert(model=M, version=V, scope=7, rows=[(mine, 3, _vec(1))])
    for _ in range(2):
        with django_assert_num_queries(1):
            assert set(cache_lookup_served(model=M, version=V, keys=[mine], scopes=[7, PUBLIC_SCOPE])) == {mine}
    scope_epoch_learn(7, "epoch-1")
    with django_assert_num_queries(1):
        cache_lookup_served(model=M, version=V, keys=[mine], scopes=[7, PUBLIC_SCOPE])
    with django_assert_num_queries(0):
        assert set(cache_lookup_served(model=M, version=V, keys=[mine], scopes=[7, PUBLIC_SCOPE])) == {mine}


def test_a_moved_scope_epoch_kills_that_scopes_copies_only():
    from embeddings.cache import Hit
    from embeddings.hotcache import HotCache

    hot = HotCache(max_bytes=1 << 20)
    hot.scope_epoch_set(7, "e1")
    hot.scope_epoch_set(8, "e1")
    mine, bobs, public = text_key("mine"), text_key("bob's"), text_key("public")
    hot.put_many(M, V, [(mine, 7, Hit(_vec(1), 1, 7)), (bobs, 8, Hit(_vec(2), 1, 8)),
                        (public, PUBLIC_SCOPE, Hit(_vec(3), 1, PUBLIC_SCOPE))])
    before = hot.generations([7, PUBLIC_SCOPE])  # a lookup that started before the DELETE...
    hot.scope_epoch_set(7, "e1")  # the same epoch again: nothing changes
    assert set(hot.get_many(M, V, [7, PUBLIC_SCOPE], [mine, public])) == {mine, public}
    hot.scope_epoch_set(7, "e2")  # tenant 7 deleted entries
    assert set(hot.get_many(M, V, [7, PUBLIC_SCOPE], [mine, public])) == {public}
    assert set(hot.get_many(M, V, [8], [bobs])) == {bobs}
    assert len(hot) == 2 and hot.bytes == 2 * (32 + 400)  # the dead entry was dropped when met
    # ...does not put back what it read before the epoch moved; one that starts now does.
    hot.put_many(M, V, [(mine, 7, Hit(_vec(1), 1, 7))], gens=before)
    assert hot.get_many(M, V, [7], [mine]) == {}
    hot.put_many(M, V, [(mine, 7, Hit(_vec(1), 1, 7))], gens=hot.generations([7]))
    assert set(hot.get_many(M, V, [7], [mine])) == {mine}
