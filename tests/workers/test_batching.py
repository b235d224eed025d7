from workers.batching import batches_pack


def test_it_sorts_by_length_and_caps_texts():
    lengths = [5, 1, 3, 2, 4]
    packs = batches_pack(lengths, max_texts=2, max_tokens=1000)
    assert packs == [[1, 3], [2, 4], [0]]


def test_it_caps_padded_tokens():
    packs = batches_pack([10, 10, 10, 100], max_texts=64, max_tokens=200)
    assert packs == [[0, 1, 2], [3]]
    assert all(len(p) * max([10, 10, 10, 100][i] for i in p) <= 200 for p in packs)


def test_a_text_over_the_token_cap_gets_its_own_pass():
    assert batches_pack([500, 5], max_texts=8, max_tokens=100) == [[1], [0]]


def test_every_index_appears_once():
    lengths = [7, 3, 9, 1, 1, 4, 12, 6] * 20
    packs = batches_pack(lengths, max_texts=16, max_tokens=64)
    flat = [i for p in packs for i in p]
    assert sorted(flat) == list(range(len(lengths)))
