from accounts.keys import key_hash, key_make, key_parse_prefix, key_verify


def test_it_makes_keys_that_verify_and_parse():
    new = key_make()
    assert new.key.startswith(f"ep_{new.prefix}_")
    assert key_parse_prefix(new.key) == new.prefix
    assert key_verify(new.key, new.key_hash)
    assert new.key not in new.key_hash


def test_it_rejects_a_changed_key():
    new = key_make()
    assert not key_verify(new.key[:-1] + ("a" if new.key[-1] != "a" else "b"), new.key_hash)


def test_it_does_not_parse_foreign_tokens():
    for token in ["sk-abc", "ep_short_x", "ep_", "", "a.b.c", "ep_abcdefghijkl"]:
        assert key_parse_prefix(token) is None


def test_two_keys_differ():
    a, b = key_make(), key_make()
    assert a.prefix != b.prefix and a.key != b.key and key_hash(a.key) != key_hash(b.key)
