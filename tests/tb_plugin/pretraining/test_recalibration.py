"""The pieces of recalibration: `init_from` (pretraining that starts from another stage's weights, e.g.
a model pretrained on simulation fine-tuned on a run's own track candidates) with its refusals, and
`trained_stage_dir` (a finished model's table injected into other events)."""

import pytest
import torch

from tb_plugin.config import ConfigError
from tb_plugin.event_store import list_event_files, load_event
from tb_plugin.injection import ModuleEmbedding
from tb_plugin.training import read_checkpoint, trained_checkpoint
from tests.tb_plugin.pretraining.test_candidate_tracks import write_candidates
from tests.tb_plugin.pretraining.test_stage import tb_stage


def weights(stage_dir):
    return read_checkpoint(trained_checkpoint(stage_dir, "TrackingBERT"))["state_dict"]


def largest_difference(a, b):
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def simulation_model(simulated_store, tmp_path_factory):
    stage_dir = tmp_path_factory.mktemp("init") / "simulation"
    tb_stage(simulated_store, stage_dir).train()
    return stage_dir


def test_recalibration_on_candidates_starts_from_the_simulation_weights(simulated_store, simulation_model, tmp_path):
    """The recalibration loop at a tiny size: the candidates stand in for the pipeline's own tracks. With a
    vanishing learning rate the result is the starting model, which a fresh start with another seed is not."""
    write_candidates(simulated_store, tmp_path / "tracks")
    keys = {"tracks_from": "track_building", "tracks_dir": str(tmp_path / "tracks"), "lr": 1e-12, "seed": 5}
    recalibrated = tb_stage(simulated_store, tmp_path / "recalibrated", init_from=str(simulation_model), **keys)
    recalibrated.train()
    start = weights(simulation_model)
    assert largest_difference(weights(tmp_path / "recalibrated"), start) < 1e-6
    fresh = tb_stage(simulated_store, tmp_path / "fresh", **keys)
    fresh.train()
    assert largest_difference(weights(tmp_path / "fresh"), start) > 1e-2
    assert recalibrated.evaluate()["mdm"]["trackingbert"]["top1"] >= 0.0


def test_init_from_moves_the_weights_with_a_real_learning_rate(simulated_store, simulation_model, tmp_path):
    tb_stage(simulated_store, tmp_path / "tuned", init_from=str(simulation_model), seed=5).train()
    tuned, start = weights(tmp_path / "tuned"), weights(simulation_model)
    assert largest_difference(tuned, start) > 1e-6
    table = "model.embeddings.tok.weight"
    assert torch.allclose(tuned[table], start[table], atol=0.5)  # one short epoch: near where it began


def test_init_from_refusals(simulated_store, simulation_model, tmp_path):
    with pytest.raises(ConfigError, match="init_from' must be another stage_dir"):
        tb_stage(simulated_store, simulation_model, init_from=str(simulation_model))
    with pytest.raises(ConfigError, match="source is 'random', which trains nothing"):
        tb_stage(simulated_store, tmp_path / "r", source="random", init_from=str(simulation_model))
    with pytest.raises(FileNotFoundError, match="key 'init_from': no trained TrackingBERT"):
        tb_stage(simulated_store, tmp_path / "a", init_from=str(tmp_path / "nothing")).train()
    random_dir = tmp_path / "random"
    tb_stage(simulated_store, random_dir, source="random").train()
    with pytest.raises(ValueError, match="is a random control, not a pretrained model"):
        tb_stage(simulated_store, tmp_path / "b", init_from=str(random_dir)).train()
    with pytest.raises(ValueError, match="key 'init_from': .* has the vocabulary of volumes"):
        tb_stage(simulated_store, tmp_path / "c", init_from=str(simulation_model), volumes=[8]).train()
    with pytest.raises(Exception, match="was trained with n_embd: 16"):
        tb_stage(simulated_store, tmp_path / "d", init_from=str(simulation_model), n_embd=32, d_ff=64).train()


def test_a_fine_tuned_table_is_injected_in_the_coordinates_it_started_from(simulated_store, simulation_model, tmp_path):
    """normalize and dim are fitted on init_from's table: the downstream stages trained on the starting
    table read the fine-tuned one in the same coordinates (a refit would rotate its principal axes)."""
    options = {"normalize": "standard", "dim": 4}
    tuned = tb_stage(simulated_store, tmp_path / "tuned", init_from=str(simulation_model), seed=5, **options)
    tuned.train()
    inject, tokenizer, _ = tuned.make_injection()
    table = tuned.trained()[0].model.module_embeddings()
    start = tb_stage(simulated_store, simulation_model).trained()[0].model.module_embeddings()
    kept = ModuleEmbedding.from_token_embeddings(table, tokenizer, reference_embeddings=start, **options).table
    refit = ModuleEmbedding.from_token_embeddings(table, tokenizer, **options).table
    assert torch.equal(inject.table, kept) and not torch.allclose(inject.table, refit, atol=1e-4)


def test_a_trained_model_is_injected_into_other_events_with_trained_stage_dir(
    simulated_store, simulation_model, tmp_path
):
    options = {"normalize": "standard", "dim": 4}
    trained = sorted(p.name for p in (simulation_model / "artifacts").iterdir())
    applied = tb_stage(simulated_store, tmp_path / "applied", trained_stage_dir=str(simulation_model), **options)
    applied.infer()
    own = tb_stage(simulated_store, simulation_model, **options).make_injection()[0]
    event = load_event(list_event_files(tmp_path / "applied", "testset")[0])
    assert torch.equal(event.hit_tb_emb, own.table[event.hit_module_index])
    assert sorted(p.name for p in (simulation_model / "artifacts").iterdir()) == trained  # only read
    assert not (tmp_path / "applied" / "artifacts").exists()
    with pytest.raises(ValueError, match="infers with the model of"):
        applied.train()
