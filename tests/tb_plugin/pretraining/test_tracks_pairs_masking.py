import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from tb_plugin.geometry import Detector
from tb_plugin.pretraining.masking import IGNORE, eval_mask_positions, mask_for_eval, mask_for_training
from tb_plugin.pretraining.pairs import layout_pairs, make_pairs
from tb_plugin.pretraining.tracks import TrackSet, event_tracks
from tb_plugin.tokenizer import CLS, MASK, N_SPECIAL, PAD, SEP, ModuleTokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return ModuleTokenizer(Detector.builtin())


def hand_event(event_id="000000007"):
    """Particle 11: 5 hits stored out of order along +x from a vertex at the origin; particle 22: 3 hits
    from a vertex at x = 100 travelling towards the origin; hit 8 is noise."""
    x = torch.tensor([30.0, 10.0, 50.0, 20.0, 40.0, 90.0, 70.0, 80.0, 5.0])
    module = torch.tensor([103, 101, 105, 102, 104, 201, 203, 202, 999])
    # truth edges (any order/orientation: only membership matters)
    edges = torch.tensor([[1, 3, 0, 4, 5, 7], [3, 0, 4, 2, 7, 6]])
    pid = torch.tensor([11, 11, 11, 11, 22, 22])
    return Data(
        hit_x=x,
        hit_y=torch.zeros(9),
        hit_z=torch.zeros(9),
        hit_module_index=module,
        hit_volume_id=torch.full((9,), 8),
        track_edges=edges,
        track_particle_id=pid,
        track_particle_pt=torch.tensor([900.0] * 4 + [2500.0] * 2),
        track_particle_vx=torch.tensor([0.0] * 4 + [100.0] * 2),
        track_particle_vy=torch.zeros(6),
        track_particle_vz=torch.zeros(6),
        event_id=event_id,
        num_nodes=9,
    )


def tok(modules):
    return [N_SPECIAL + m for m in modules]


def test_tracks_follow_the_trajectory_not_hit_order(tokenizer):
    tracks = event_tracks(hand_event(), tokenizer, min_hits=3, max_hits=8, long_tracks="truncate", source="e")
    assert tracks.length.tolist() == [5, 3]
    assert tracks.tokens[0, :5].tolist() == tok([101, 102, 103, 104, 105])
    assert tracks.tokens[1, :3].tolist() == tok([201, 202, 203])  # from the vertex at x = 100 inwards
    assert (tracks.tokens[1, 3:] == PAD).all()
    assert tracks.pt.tolist() == [900.0, 2500.0] and tracks.event_id.tolist() == [7, 7]


def test_min_hits_truncate_and_split(tokenizer):
    event = hand_event()
    assert event_tracks(event, tokenizer, 4, 8, "truncate", "e").length.tolist() == [5]
    truncated = event_tracks(event, tokenizer, 2, 3, "truncate", "e")
    assert truncated.length.tolist() == [3, 3]
    assert truncated.tokens[0].tolist() == tok([101, 102, 103])
    split = event_tracks(event, tokenizer, 2, 3, "split", "e")
    assert split.length.tolist() == [3, 2, 3]
    assert split.tokens[1, :2].tolist() == tok([104, 105])


def test_volume_restriction_keeps_only_vocabulary_hits():
    detector = Detector.builtin()
    pixel = ModuleTokenizer(detector, volumes=(7, 8, 9))
    event = hand_event()
    event.hit_volume_id = torch.tensor([8, 8, 13, 8, 8, 8, 8, 8, 8])  # the third hit of particle 11 is a strip hit
    tracks = event_tracks(event, pixel, 3, 8, "truncate", "e")
    assert tracks.length.tolist() == [4, 3]
    assert 5 + 105 not in tracks.tokens[0].tolist()


def test_trackset_save_load(tmp_path, tokenizer):
    tracks = event_tracks(hand_event(), tokenizer, 3, 8, "truncate", "e")
    tracks.save(tmp_path / "t.npz")
    again = TrackSet.load(tmp_path / "t.npz")
    assert all(np.array_equal(getattr(tracks, k), getattr(again, k)) for k in tracks.__dict__)


def random_trackset(n_events=20, per_event=50, seed=0):
    rng = np.random.default_rng(seed)
    k = n_events * per_event
    length = rng.integers(4, 9, k)
    tokens = np.where(np.arange(8)[None] < length[:, None], rng.integers(N_SPECIAL, 500, (k, 8)), PAD)
    return TrackSet(
        tokens=tokens,
        length=length,
        pt=rng.lognormal(6, 1, k).astype(np.float32),
        event_id=np.repeat(np.arange(n_events), per_event),
        particle_id=np.arange(k),
    )


def test_pairs_are_balanced_within_event_and_deterministic():
    tracks = random_trackset()
    pairs = make_pairs(tracks, seed=1)
    assert len(pairs) == len(tracks)
    assert abs(pairs.label.mean() - 0.5) <= 1 / len(pairs)
    assert np.array_equal(tracks.event_id[pairs.a], tracks.event_id[pairs.b])
    assert np.array_equal(pairs.label, (tracks.pt[pairs.a] > tracks.pt[pairs.b]).astype(np.float32))
    again = make_pairs(tracks, seed=1)
    assert np.array_equal(pairs.a, again.a) and np.array_equal(pairs.b, again.b)
    assert not np.array_equal(pairs.a, make_pairs(tracks, seed=2).a)


def test_layout_is_cls_a_sep_b_sep_with_segments():
    tracks = random_trackset(1, 4)
    pairs = make_pairs(tracks, seed=0)
    seq = layout_pairs(tracks, pairs)
    for i in range(len(pairs)):
        a = tracks.tokens[pairs.a[i], : tracks.length[pairs.a[i]]].tolist()
        b = tracks.tokens[pairs.b[i], : tracks.length[pairs.b[i]]].tolist()
        expected = [CLS, *a, SEP, *b, SEP]
        n = len(expected)
        assert seq["input_ids"][i, :n].tolist() == expected
        assert (seq["input_ids"][i, n:] == PAD).all() and seq["attention_mask"][i].sum() == n
        assert seq["segment_ids"][i, :n].tolist() == [0] * (len(a) + 2) + [1] * (len(b) + 1)
        assert seq["hit_position"][i, :n].tolist() == [-1, *range(len(a)), -1, *range(len(b)), -1]
    assert seq["input_ids"].shape[1] == 19


def test_training_mask_statistics():
    tracks = random_trackset(50, 100)
    seq = layout_pairs(tracks, make_pairs(tracks, seed=0))
    ids, pos = torch.from_numpy(seq["input_ids"]), torch.from_numpy(seq["hit_position"])
    masked, labels = mask_for_training(ids, pos, rate=0.5, vocab_size=500, generator=torch.Generator().manual_seed(0))
    chosen = labels != IGNORE
    assert not chosen[pos < 0].any()  # specials and padding are never masked
    assert chosen[pos >= 0].float().mean() == pytest.approx(0.5, abs=0.01)
    assert torch.equal(labels[chosen], ids[chosen])
    as_mask = (masked[chosen] == MASK).float().mean()
    unchanged = (masked[chosen] == ids[chosen]).float().mean()
    assert as_mask == pytest.approx(0.8, abs=0.01)
    assert unchanged == pytest.approx(0.1 + 0.1 / 495, abs=0.01)
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_eval_mask_hides_one_module_per_track_behind_mask():
    tracks = random_trackset(10, 30)
    seq = layout_pairs(tracks, make_pairs(tracks, seed=0))
    chosen = eval_mask_positions(seq["segment_ids"], seq["hit_position"], seed=3)
    inputs, labels = mask_for_eval(seq["input_ids"], chosen)
    for segment in (0, 1):
        assert (chosen & (seq["segment_ids"] == segment)).sum(axis=1).tolist() == [1] * len(chosen)
    assert (inputs[chosen] == MASK).all()
    assert np.array_equal(labels[chosen], seq["input_ids"][chosen])
    # a "model" that copies its input at the scored position must score zero: the answer is never visible
    assert (inputs[chosen] == labels[chosen]).sum() == 0
    assert np.array_equal(chosen, eval_mask_positions(seq["segment_ids"], seq["hit_position"], seed=3))
    positions = seq["hit_position"][chosen]
    assert set(np.unique(positions)) == set(range(8))


def test_batches_are_trimmed_to_their_longest_pair_without_changing_the_loss():
    from tb_plugin.model import TrackingBERT, TrackingBERTConfig, pretraining_losses
    from tb_plugin.pretraining.datamodule import PairDataset, TrainingMasker, collate_pairs

    tracks = random_trackset(4, 40)
    tracks.length[:] = np.minimum(tracks.length, 5)  # every track 4-5 hits: pairs of at most 13 tokens
    tracks.tokens[:, 5:] = PAD
    data = PairDataset(tracks, make_pairs(tracks, seed=0), fixed_mask_seed=3)
    rows = [data[i] for i in range(32)]
    trimmed = collate_pairs(rows)
    longest = int(max(r["attention_mask"].sum() for r in rows))
    assert trimmed["input_ids"].shape == (32, longest) and longest <= 13
    assert trimmed["ntp_labels"].shape == (32,)
    full = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}  # [32, 19]: what the batch was before
    torch.manual_seed(0)
    model = TrackingBERT(TrackingBERTConfig(vocab_size=500, max_len=19, n_embd=16, n_head=2, n_layer=2, d_ff=32)).eval()
    with torch.no_grad():
        a, b = pretraining_losses(model, full)["loss"], pretraining_losses(model, trimmed)["loss"]
    torch.testing.assert_close(a, b)
    training = TrainingMasker(0.5, 500)(rows)
    assert training["input_ids"].shape[1] == longest and training["mdm_labels"].shape[1] == longest
    long_tracks = random_trackset(2, 40, seed=1)  # 4-8 hits: some pairs are 8 + 8 (19 tokens)
    long_data = PairDataset(long_tracks, make_pairs(long_tracks, seed=0), fixed_mask_seed=3)
    assert collate_pairs([long_data[i] for i in range(len(long_data))])["input_ids"].shape[1] == 19
