from fedcifar.strategy.selection import uniform


def test_uniform_selection_is_seeded_per_round_and_without_replacement():
    a = uniform(64, 16, seed=0, server_round=1)
    assert len(a) == len(set(a)) == 16 and all(0 <= c < 64 for c in a)
    assert a == uniform(64, 16, seed=0, server_round=1)
    assert a != uniform(64, 16, seed=0, server_round=2)
    assert a != uniform(64, 16, seed=1, server_round=1)
    assert uniform(5, 5, seed=0, server_round=3) == [0, 1, 2, 3, 4]


def test_uniform_selection_covers_clients_evenly_over_many_rounds():
    counts = [0] * 64
    for r in range(1, 401):
        for c in uniform(64, 16, seed=0, server_round=r):
            counts[c] += 1
    assert min(counts) > 60 and max(counts) < 140  # expected 100 each
