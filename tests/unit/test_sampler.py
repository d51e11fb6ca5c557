"""DistributedSampler: torch's sizes, padding, tail dropping and striding; shuffling by seed+epoch."""
from pathlib import Path

import numpy as np
import pytest

from syncnorm.parallel import DistributedSampler

REF = np.load(Path(__file__).resolve().parents[1] / "data" / "layer_refs.npz", allow_pickle=False)
SAMPLER_CASES = sorted({k.split("/")[1] for k in REF.files if k.startswith("sampler/")})


@pytest.mark.parametrize("case", SAMPLER_CASES)
def test_unshuffled_indices_match_torch(case):
    n, reps, drop = (int(part[len(prefix):]) for part, prefix in zip(case.split("_"), ("n", "p", "drop")))
    for r in range(reps):
        s = DistributedSampler(n, num_replicas=reps, rank=r, shuffle=False, drop_last=bool(drop))
        want = REF[f"sampler/{case}/r{r}"]
        assert list(s) == want.tolist() and len(s) == want.size


@pytest.mark.parametrize("n,reps,drop", [(10, 4, False), (10, 4, True), (3, 8, False), (12, 3, True),
                                         (1797, 4, False)])
def test_shuffled_shards_cover_the_epoch_like_torch(n, reps, drop):
    shards = []
    for r in range(reps):
        s = DistributedSampler(range(n), reps, r, shuffle=True, seed=5, drop_last=drop)
        s.set_epoch(2)
        shards.append(s.indices())
    sizes = {len(x) for x in shards}
    assert len(sizes) == 1  # every rank gets the same number of samples (same number of steps)
    allidx = np.concatenate(shards)
    if drop:
        assert len(np.unique(allidx)) == allidx.size == (n // reps) * reps
    else:
        assert set(allidx.tolist()) == set(range(n)) and allidx.size == -(-n // reps) * reps


def test_set_epoch_reshuffles_identically_on_every_rank():
    a = DistributedSampler(100, 2, 0, seed=1)
    b = DistributedSampler(100, 2, 0, seed=1)
    e0 = a.indices()
    a.set_epoch(1)
    b.set_epoch(1)
    assert not np.array_equal(e0, a.indices()) and np.array_equal(a.indices(), b.indices())
    c = DistributedSampler(100, 2, 0, seed=2)
    assert not np.array_equal(c.indices(), e0)


def test_state_dict_round_trip_and_mismatch():
    s = DistributedSampler(50, 2, 1, seed=3)
    s.set_epoch(4)
    t = DistributedSampler(50, 2, 1, seed=3)
    t.load_state_dict(s.state_dict())
    assert t.epoch == 4 and np.array_equal(s.indices(), t.indices())
    with pytest.raises(ValueError, match="num_replicas=2; this sampler has num_replicas=4"):
        DistributedSampler(50, 4, 1, seed=3).load_state_dict(s.state_dict())


def test_defaults_to_the_world_and_checks_rank():
    s = DistributedSampler(10)  # a plain process is a world of 1
    assert (s.num_replicas, s.rank, len(s)) == (1, 0, 10)
    with pytest.raises(ValueError, match=r"Invalid rank 4, rank should be in the interval \[0, 3\]"):
        DistributedSampler(10, num_replicas=4, rank=4)
