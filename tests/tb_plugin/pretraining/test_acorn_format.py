"""The tracking_bert stage on a feature store written in ACORN's format by hand (REFERENCE.md §3).

The input events are built here with plain torch + torch_geometric and saved with torch.save, the
way ACORN's data reading saves them; nothing of tb_plugin writes them. ACORN's reader puts every
field it was asked for on the event with its `hit_`/`track_` prefix (`variable_with_prefix: true`),
goes through pandas, so floats are float64 and integers int64, has no `hit_module_index` of ours
and no particle vertices unless asked, stores `event_id` as a zero-padded string and `config` as a
list holding its own config. The stage must train on such a folder and write every event back with
every field untouched, plus `hit_tb_emb` [N, D] and, with `flat_columns`, the D columns
`hit_tb_emb_0 .. hit_tb_emb_{D-1}` that ACORN's InteractionGNN stacks as 1-D node features.
"""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch_geometric.data import Data

from tb_plugin.event_store import list_event_files
from tb_plugin.geometry import Detector
from tb_plugin.pipeline import stage_from_mapping

SPLITS = {"trainset": [1000, 1001, 1002], "valset": [1003], "testset": [1004]}
TRACKS_PER_EVENT = 40
NOISE_PER_EVENT = 25
BARREL = [
    (8, 2),
    (8, 4),
    (8, 6),
    (8, 8),
    (13, 2),
    (13, 4),
    (13, 6),
    (13, 8),
    (17, 2),
    (17, 4),
]  # (volume, layer), inside out
TINY = {
    "n_layer": 1,
    "n_embd": 16,
    "n_head": 2,
    "d_ff": 32,
    "lr": 3e-3,
    "warmup_steps": 5,
    "batch_size": 256,
    "max_epochs": 1,
}
D = TINY["n_embd"]

# What ACORN's TrackMLReader records in `config` (its own YAML, prefixed feature names).
ACORN_READER_CONFIG = {
    "stage": "data_reading",
    "model": "TrackMLReader",
    "input_dir": "/data/trackml/train_100_events",
    "stage_dir": "/data/acorn/feature_store",
    "detector_path": "/data/trackml/detectors.csv",
    "module_columns": ["volume_id", "layer_id", "module_id"],
    "variable_with_prefix": True,
    "data_split": [3, 1, 1],
    "max_workers": 1,
    "feature_sets": {
        "hit_features": [
            "hit_id",
            "hit_x",
            "hit_y",
            "hit_z",
            "hit_r",
            "hit_phi",
            "hit_eta",
            "hit_region",
            "hit_volume_id",
            "hit_layer_id",
            "hit_module_id",
            "hit_particle_id",
        ],
        "track_features": [
            "track_particle_id",
            "track_particle_pt",
            "track_particle_eta",
            "track_particle_nhits",
            "track_particle_primary",
            "track_particle_pdgId",
            "track_particle_radius",
        ],
    },
    "region_labels": {1: {"volume_id": [7, 12, 16]}, 2: {"volume_id": [8, 13, 17]}, 3: {"volume_id": [9, 14, 18]}},
}
HIT_FIELDS = ACORN_READER_CONFIG["feature_sets"]["hit_features"]
TRACK_FIELDS = ACORN_READER_CONFIG["feature_sets"]["track_features"]


def barrel_modules(detector: Detector) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """(module ids, centres [K, 3]) of each barrel layer the tracks cross."""
    out = {}
    for volume, layer in BARREL:
        rows = (detector.volume_id == volume) & (detector.layer_id == layer)
        out[volume, layer] = detector.module_id[rows].astype(np.int64), detector.center[rows]
    return out


def acorn_event(event_id: int, detector_layers, rng: np.random.Generator) -> Data:
    """One event as ACORN's data reading writes it: slightly bent tracks from the beam line through the
    barrel, one hit per layer on the module whose centre is nearest, plus noise hits."""
    rows = []  # (x, y, z, volume, layer, module, particle)
    particles = []
    for k in range(TRACKS_PER_EVENT):
        particle_id = int(rng.integers(1, 2**52)) << 4 | k  # unique, TrackML-sized
        phi0, eta = rng.uniform(-math.pi, math.pi), rng.uniform(-0.8, 0.8)
        pt = float(rng.uniform(500.0, 20000.0))  # MeV
        q = float(rng.choice([-1.0, 1.0]))
        vz = float(rng.normal(0.0, 20.0))
        for volume, layer in BARREL:
            ids, centres = detector_layers[volume, layer]
            radius = float(np.hypot(centres[0, 0], centres[0, 1]))
            phi = phi0 + q * 0.3 * 2.0 * radius / (2.0 * pt)  # small bend of a 2 T field (pT in MeV, r in mm)
            point = np.array([radius * math.cos(phi), radius * math.sin(phi), vz + radius * math.sinh(eta)])
            nearest = int(np.argmin(((centres - point) ** 2).sum(axis=1)))
            rows.append((*point, volume, layer, int(ids[nearest]), particle_id))
        particles.append((particle_id, pt, eta, len(BARREL), 1, int(rng.choice([211, -211, 13, 11])), 0.0))
    for _ in range(NOISE_PER_EVENT):
        volume, layer = BARREL[int(rng.integers(len(BARREL)))]
        ids, centres = detector_layers[volume, layer]
        m = int(rng.integers(len(ids)))
        rows.append((*(centres[m] + rng.normal(0.0, 2.0, 3)), volume, layer, int(ids[m]), 0))

    hits = pd.DataFrame(rows, columns=["x", "y", "z", "volume_id", "layer_id", "module_id", "particle_id"])
    hits = hits.sample(frac=1.0, random_state=int(rng.integers(1 << 31))).reset_index(
        drop=True
    )  # file order is not track order
    n = len(hits)
    x, y, z = (np.array(hits[c], dtype=np.float64) for c in "xyz")
    r = np.hypot(x, y)
    graph = Data()
    graph.hit_id = torch.arange(n, dtype=torch.int64)  # ACORN's TrackML reader remaps hit ids to 0..N-1
    graph.hit_x, graph.hit_y, graph.hit_z = torch.tensor(x), torch.tensor(y), torch.tensor(z)
    graph.hit_r = torch.tensor(r)
    graph.hit_phi = torch.tensor(np.arctan2(y, x))
    graph.hit_eta = torch.tensor(-np.log(np.tan(np.arctan2(r, z) / 2.0)))
    volume = hits.volume_id.to_numpy(np.int64)
    graph.hit_region = torch.tensor(
        np.select([np.isin(volume, [7, 12, 16]), np.isin(volume, [8, 13, 17])], [1, 2], 3).astype(np.int64)
    )
    graph.hit_volume_id = torch.tensor(volume)
    graph.hit_layer_id = torch.tensor(hits.layer_id.to_numpy(np.int64))
    graph.hit_module_id = torch.tensor(hits.module_id.to_numpy(np.int64))
    graph.hit_particle_id = torch.tensor(hits.particle_id.to_numpy(np.int64))

    # truth edges: consecutive hits of each particle ordered by distance from its vertex, inner -> outer
    table = pd.DataFrame(
        particles, columns=["particle_id", "pt", "eta", "nhits", "primary", "pdgId", "radius"]
    ).set_index("particle_id")
    signal = hits[hits.particle_id != 0].assign(R=np.sqrt(r**2 + z**2)[hits.particle_id.to_numpy() != 0])
    signal = signal.sort_values(["particle_id", "R"])
    edges, owners = [], []
    for particle_id, group in signal.groupby("particle_id", sort=True):
        index = group.index.to_numpy()
        edges.append(np.stack([index[:-1], index[1:]]))
        owners += [particle_id] * (len(index) - 1)
    graph.track_edges = torch.tensor(np.concatenate(edges, axis=1).astype(np.int64))  # [2, T]
    owner = table.loc[owners]
    graph.track_particle_id = torch.tensor(owners, dtype=torch.int64)
    graph.track_particle_pt = torch.tensor(owner.pt.to_numpy(np.float64))
    graph.track_particle_eta = torch.tensor(owner.eta.to_numpy(np.float64))
    graph.track_particle_nhits = torch.tensor(owner.nhits.to_numpy(np.int64))
    graph.track_particle_primary = torch.tensor(owner.primary.to_numpy(np.int64))
    graph.track_particle_pdgId = torch.tensor(owner.pdgId.to_numpy(np.int64))
    graph.track_particle_radius = torch.tensor(owner.radius.to_numpy(np.float64))
    graph.config = [dict(ACORN_READER_CONFIG)]
    graph.event_id = f"{event_id:09d}"
    return graph


@pytest.fixture(scope="module")
def acorn_store(tmp_path_factory):
    """{trainset,valset,testset}/event{ID:09d}.pyg as ACORN saves them, with detectors.csv beside."""
    root = tmp_path_factory.mktemp("acorn_feature_store")
    detector = Detector.builtin()
    detector.to_csv(root / "detectors.csv")  # the TrackML geometry file an ACORN user points detector_path at
    layers = barrel_modules(detector)
    rng = np.random.default_rng(7)
    events = {}
    for split, ids in SPLITS.items():
        (root / split).mkdir()
        for event_id in ids:
            graph = acorn_event(event_id, layers, rng)
            path = root / split / f"event{event_id:09d}.pyg"
            torch.save(graph, path)
            events[split, path.name] = graph
    return root, events


@pytest.fixture(scope="module")
def tb_output(acorn_store, tmp_path_factory):
    root, _ = acorn_store
    stage_dir = tmp_path_factory.mktemp("tracking_bert")
    stage = stage_from_mapping(
        {
            "stage": "tracking_bert",
            "model": "TrackingBERT",
            "input_dir": str(root),
            "stage_dir": str(stage_dir),
            "flat_columns": True,
            **TINY,
        },
        "tracking_bert.yaml",
    )
    stage.train()
    stage.infer()
    return stage


def test_the_input_is_acorn_shaped(acorn_store):
    """The hand-made events carry exactly ACORN's fields, and the stage's own reader is not needed to open them."""
    _, events = acorn_store
    for graph in events.values():
        assert set(graph.keys()) == set(HIT_FIELDS) | set(TRACK_FIELDS) | {"track_edges", "config", "event_id"}
        n, t = graph.hit_id.shape[0], graph.track_edges.shape[1]
        assert all(graph[f].shape == (n,) for f in HIT_FIELDS)
        assert all(graph[f].shape == (t,) for f in TRACK_FIELDS)
        assert graph.track_edges.dtype == torch.int64 and t == TRACKS_PER_EVENT * (len(BARREL) - 1)
        # inner to outer by r^2 + z^2
        d2 = graph.hit_r**2 + graph.hit_z**2
        assert bool((d2[graph.track_edges[0]] < d2[graph.track_edges[1]]).all())


def test_stage_output_keeps_every_acorn_field_and_adds_the_embedding(acorn_store, tb_output):
    root, events = acorn_store
    stage_dir = tb_output.stage_dir
    detector = Detector.builtin()
    for split in SPLITS:
        assert [p.name for p in list_event_files(stage_dir, split)] == [p.name for p in list_event_files(root, split)]
        assert sorted(p.name for p in (stage_dir / split).iterdir()) == sorted(p.name for p in (root / split).iterdir())
    assert {p.name for p in stage_dir.iterdir() if p.is_dir() and p.name.endswith("set")} == set(SPLITS)

    for (split, name), before in events.items():
        path = stage_dir / split / name
        after = torch.load(path, weights_only=False)  # what ACORN does
        assert isinstance(after, Data)
        for key in before.keys():
            if key == "config":
                continue
            if isinstance(before[key], torch.Tensor):
                assert after[key].dtype == before[key].dtype, (name, key)
                assert torch.equal(after[key], before[key]), (name, key)
            else:
                assert type(after[key]) is type(before[key]) and after[key] == before[key], (name, key)
        assert after.event_id == before.event_id == name[len("event") : -len(".pyg")]
        assert after.config[:-1] == before.config == [ACORN_READER_CONFIG]
        assert after.config[-1]["stage"] == "tracking_bert" and after.config[-1]["flat_columns"] is True

        n = before.hit_id.shape[0]
        # new: the embedding, its flat columns, and the dense module index it was looked up by (ACORN's
        # name `hit_module_index`; the input had only the TrackML ids, our module map needs the index)
        assert set(after.keys()) - set(before.keys()) == {
            "hit_tb_emb",
            "hit_module_index",
            *(f"hit_tb_emb_{i}" for i in range(D)),
        }
        assert after.hit_module_index.dtype == torch.int64
        assert torch.equal(
            after.hit_module_index,
            torch.tensor(
                detector.index_strict(
                    before.hit_volume_id.numpy(), before.hit_layer_id.numpy(), before.hit_module_id.numpy()
                )
            ),
        )
        assert after.hit_tb_emb.dtype == torch.float32 and after.hit_tb_emb.shape == (n, D)
        assert bool(torch.isfinite(after.hit_tb_emb).all())
        for i in range(D):
            column = after[f"hit_tb_emb_{i}"]
            assert column.dtype == torch.float32 and column.shape == (n,)
            assert torch.equal(column, after.hit_tb_emb[:, i])
        # hits on the same module share one vector; different modules get different ones
        same = (
            (after.hit_volume_id[:, None] == after.hit_volume_id)
            & (after.hit_layer_id[:, None] == after.hit_layer_id)
            & (after.hit_module_id[:, None] == after.hit_module_id)
        )  # [N, N]
        equal = (after.hit_tb_emb[:, None, :] == after.hit_tb_emb[None, :, :]).all(-1)  # [N, N]
        assert torch.equal(same, equal)

        # ACORN's InteractionGNN stacks its 1-D node_features
        names = ["hit_r", "hit_phi", "hit_z", *(f"hit_tb_emb_{i}" for i in range(D))]
        x = torch.stack([after[f] for f in names], dim=-1)
        assert x.shape == (n, 3 + D)
        assert torch.equal(x[:, 3:].float(), after.hit_tb_emb)


def test_the_embedding_is_the_trained_module_table(acorn_store, tb_output):
    """hit_tb_emb of each hit is the trained model's vector of the hit's (volume, layer, module)."""
    module, tokenizer, detector = tb_output.trained()
    table = module.model.module_embeddings().detach()  # [V, D]
    _, events = acorn_store
    split, name = next(iter(events))
    after = torch.load(tb_output.stage_dir / split / name, weights_only=False)
    index = detector.index_strict(after.hit_volume_id.numpy(), after.hit_layer_id.numpy(), after.hit_module_id.numpy())
    tokens = torch.tensor(tokenizer.encode(index))
    assert torch.allclose(after.hit_tb_emb, table[tokens])


def test_finds_events_named_as_acorn_data_reading_names_them(acorn_store, tmp_path):
    _, events = acorn_store
    (split, name), graph = next(iter(events.items()))
    folder = tmp_path / split
    folder.mkdir()
    event_id = name[len("event") : -len(".pyg")]
    torch.save(graph, folder / f"event{event_id}-graph.pyg")
    for part in ("truth", "particles"):  # the CSV files ACORN's reader leaves beside each graph
        (folder / f"event{event_id}-{part}.csv").write_text("hit_id\n0\n")
    assert [p.name for p in list_event_files(tmp_path, split)] == [f"event{event_id}-graph.pyg"]
