import numpy as np
import pytest

from stages.track_building.matching import (
    STYLES,
    MatchCounts,
    check_matching_fraction,
    count_matches,
    fake_kinds,
    fraction_passes,
    match_event,
    pair_table,
)

A, B, C, D = 11, 22, 33, 44


def constructed_event():
    """A (10 hits) split into tracks 0 (6 hits) and 1 (4 hits); B (4) and C (6) merged into track 2;
    track 3 = 3 noise hits + 2 of D's 5 hits; D's other 3 hits are in no track."""
    pid = np.array([A] * 10 + [B] * 4 + [C] * 6 + [0] * 3 + [D] * 5)
    labels = np.array([0] * 6 + [1] * 4 + [2] * 4 + [2] * 6 + [3] * 3 + [3] * 2 + [-1] * 3)
    return labels, pid


def rates(labels, pid, f=0.5, target=None):
    tracks, particles = match_event(labels, pid, f)
    target = np.ones(len(particles), bool) if target is None else target
    return {style: count_matches(tracks, particles, target, style).rates() for style in STYLES}


def test_pair_table_counts_shared_hits_and_untracked_hits_of_the_particle():
    labels, pid = constructed_event()
    pairs = pair_table(labels, pid)
    d = pairs[pairs.particle_id == D].iloc[0]
    assert (d.track_id, d.n_shared, d.track_nhits, d.particle_nhits) == (3, 2, 5, 5)
    assert -1 not in pairs.track_id.tolist()
    assert len(pairs) == 6  # (0,A) (1,A) (2,B) (2,C) (3,noise) (3,D)


def test_atlas_counts_the_split_track_as_a_duplicate():
    r = rates(*constructed_event())["atlas"]
    # A found by both halves (duplicate), C by the merged track; B and D not found.
    assert r["efficiency"] == pytest.approx(2 / 4)
    assert r["duplicate_rate"] == pytest.approx(1 / 2)
    assert r["n_duplicate_tracks"] == 1
    # tracks 0, 1, 2 are pure enough; the noise-majority track 3 is a fake.
    assert r["fake_rate"] == pytest.approx(1 / 4)


def test_one_way_finds_the_particle_swallowed_by_a_merged_track():
    r = rates(*constructed_event())["one_way"]
    # A by track 0 (6/10 of A), B by track 2 (all of B, though track 2 is mostly C), C by track 2.
    assert r["efficiency"] == pytest.approx(3 / 4)
    assert r["n_reconstructed_particles"] == 3
    # The short half of A holds 4/10 of A: it is a matched (pure) track, not a duplicate.
    assert r["duplicate_rate"] == 0.0
    assert r["fake_rate"] == pytest.approx(1 / 4)


def test_two_way_needs_double_majority():
    r = rates(*constructed_event())["two_way"]
    assert r["efficiency"] == pytest.approx(2 / 4)  # A (track 0) and C (track 2)
    assert r["duplicate_rate"] == 0.0  # the split half holds too little of A
    assert r["fake_rate"] == pytest.approx(2 / 4)  # the short half of A and the noise track
    assert (r["n_tracks"], r["n_matched_tracks"], r["n_particles"]) == (4, 2, 4)


def test_noise_dominated_track_is_a_fake_in_every_style():
    pid = np.array([0, 0, 0, 5, 5, 5, 5, 5])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    tracks, _ = match_event(labels, pid, 0.5)
    noise_track = tracks[tracks.track_id == 0].iloc[0]
    assert noise_track.particle_id == 0
    assert not noise_track[[f"matched_{s}" for s in STYLES]].any()
    assert tracks[tracks.track_id == 1][[f"matched_{s}" for s in STYLES]].to_numpy().all()


def test_half_is_not_a_majority_at_0_5_but_the_boundary_counts_above():
    # Track 0: 2 hits of P, 2 of Q; purity exactly 0.5 -> no match at f = 0.5 (ACORN adds 1e-6).
    pid = np.array([1, 1, 2, 2])
    tracks, _ = match_event(np.zeros(4, int), pid, 0.5)
    assert not tracks.matched_atlas.item()
    # 3 of 4 hits: matched at f = 0.75 (>=), not above.
    pid = np.array([1, 1, 1, 2])
    assert match_event(np.zeros(4, int), pid, 0.75)[0].matched_atlas.item()
    assert not match_event(np.zeros(4, int), pid, 0.76)[0].matched_atlas.item()
    # 3 of 5 passes f = 0.6 exactly, despite floating point.
    assert fraction_passes(np.array([3]), np.array([5]), 0.6).item()
    assert not fraction_passes(np.array([1]), np.array([2]), 0.5).item()


def test_majority_ties_go_to_the_smaller_particle_id():
    tracks, _ = match_event(np.zeros(4, int), np.array([7, 7, 3, 3]), 0.5)
    assert tracks.particle_id.item() == 3


@pytest.mark.parametrize("f", [0.49, 1.01])
def test_matching_fraction_outside_majority_range_is_refused(f):
    with pytest.raises(ValueError, match="matching_fraction"):
        check_matching_fraction(f)


def test_target_mask_restricts_the_denominator_only():
    labels, pid = constructed_event()
    tracks, particles = match_event(labels, pid, 0.5)
    target = particles.particle_id.isin([B, C]).to_numpy()
    r = count_matches(tracks, particles, target, "two_way").rates()
    assert r["efficiency"] == pytest.approx(1 / 2)
    assert r["n_tracks"] == 4  # fakes are over all tracks


def test_counts_pool_over_events_and_empty_denominators_are_none():
    total = MatchCounts(4, 2, 1, 4, 3) + MatchCounts(0, 0, 0, 0, 0)
    assert total.rates()["efficiency"] == 0.5
    assert MatchCounts().rates()["efficiency"] is None


def test_event_with_no_tracks():
    tracks, particles = match_event(np.full(3, -1), np.array([1, 1, 1]), 0.5)
    assert len(tracks) == 0 and particles.reconstructed_two_way.tolist() == [False]


def test_fakes_are_told_apart_by_kind():
    # particle 1 (10 hits): track 0 holds 6 (found), track 1 holds 4 (a piece beside it: fake)
    # particle 2 (10 hits): tracks 2 and 3 hold 4 each, 2 unassigned (lost: both pieces fake)
    # track 4: 2 hits of particle 3 and 2 of particle 4 (no majority); track 5: noise only
    pid = np.r_[[1] * 10, [2] * 10, [3, 3, 4, 4], [0, 0, 0]]
    labels = np.r_[[0] * 6, [1] * 4, [2] * 4, [3] * 4, [-1, -1], [4] * 4, [5] * 3]
    tracks, particles = match_event(labels, pid, 0.5)
    assert fake_kinds(tracks, particles, 0.5) == {
        "fragment_of_a_found_particle": 1,
        "fragment_of_a_lost_particle": 2,
        "no_majority": 2,
    }
    assert sum(fake_kinds(tracks, particles, 0.5).values()) == (~tracks.matched_two_way).sum()
