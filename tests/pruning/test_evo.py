"""EvoPress (`--allocation evo`): the level grid, the mutation keeps the kept-weight count exactly, the
staged selection against a plain re-implementation on a toy fitness, the search on a toy target, and a tiny
end-to-end run on the tiny OPT."""

from __future__ import annotations

import json
import math
import random
from functools import partial

import pytest
import torch

from prunescope.errors import PrunescopeError
from prunescope.layers import linear_weight, prunable_layers
from prunescope.pruning import PruneSpec, prune, restore
from prunescope.pruning.allocations.evo.database import LevelDatabase, level_grid, weights_per_step
from prunescope.pruning.allocations.evo.search import (
    draw_samples,
    evolve,
    mutate,
    offspring_of,
    one_by_one,
    staged_selection,
)
from prunescope.report.allocation import allocation_mapping, write_allocation_json
from tests.helpers import tiny_llama, tiny_opt, token_samples

pytestmark = pytest.mark.usefixtures("one_thread")


SIZES = {"a": 32 * 32, "b": 32 * 32, "c": 64 * 32, "d": 32 * 64, "e": 128 * 96}


def test_level_grid_follows_evopress():
    grid = level_grid(SIZES, 0.7, 8, 32)
    diff = int(0.5 * 0.3 / 8 * 32**2)
    assert weights_per_step(0.7, 8, 32) == diff == 19
    for name, numel in SIZES.items():
        levels = grid[name]
        step = diff / numel
        assert levels.weights_diff == diff and levels.base == round(0.7 * numel)
        assert -levels.low == min(math.floor(0.7 / step), 8)
        assert levels.high == min(math.floor(0.3 / step), 8)
        for level in range(levels.low, levels.high + 1):
            assert levels.pruned(level) == round(0.7 * numel) + level * diff
            assert 0 <= levels.sparsity(level) < 1
    assert (grid["e"].low, grid["e"].high) == (-8, 8)
    assert grid["a"].high == 8  # 0.3 / (19 / 1024) = 16.2 levels: capped at 8


def kept(genome, grid, names) -> int:
    return sum(grid[n].numel - grid[n].pruned(level) for n, level in zip(names, genome, strict=True))


def test_mutation_keeps_the_kept_weight_count_exactly():
    grid = level_grid(SIZES, 0.6, 3, 32)
    names = list(SIZES)
    low, high = [grid[n].low for n in names], [grid[n].high for n in names]
    rng = random.Random(0)
    uniform = kept((0,) * len(names), grid, names)
    flips = {1: 0, 2: 0, 3: 0}
    for _ in range(300):  # random genomes inside the bounds with level sum 0, then many mutations
        genome = [0] * len(names)
        for _ in range(rng.randint(0, 12)):
            genome = list(mutate(genome, low, high, rng))
        assert kept(genome, grid, names) == uniform
        for _ in range(20):
            child = mutate(genome, low, high, rng)
            assert kept(child, grid, names) == uniform
            assert all(lo <= v <= hi for v, lo, hi in zip(child, low, high, strict=True))
            moved = sum(abs(c - g) for c, g in zip(child, genome, strict=True)) // 2
            assert moved <= 3
            if moved:
                flips[min(moved, 3)] += 1
    assert flips[1] > flips[2] > flips[3] > 0  # k = min(U{1,3}, U{1,3}): 5/9, 3/9, 1/9 (less coincidences)
    children = offspring_of((0,) * len(names), 40, low, high, rng)
    assert len(set(children)) == 40 and (0,) * len(names) not in children


def plain_selection(offspring, parent, survivors, samples, fitness):
    """Staged selection written out plainly: sort by fitness, keep the best, the parent in the last stage."""
    candidates = list(offspring)
    for i in range(len(survivors)):
        if i == len(survivors) - 1:
            candidates = candidates + [parent]
        scored = [(fitness(c, samples[i]), n, c) for n, c in enumerate(candidates)]
        scored.sort()
        candidates = [c for _, _, c in scored[: survivors[i]]]
        best = scored[0][0]
    return candidates[0], best


def toy_fitness(target):
    """Distance to a hidden target genome, plus noise that depends on the stage's sample."""

    def fitness(genome, sample):
        noise = random.Random(hash((tuple(genome), tuple(sample)))).random() * 0.5
        return sum(abs(g - t) for g, t in zip(genome, target, strict=True)) + noise

    return fitness


def test_staged_selection_matches_plain_reimplementation():
    rng = random.Random(3)
    low, high = [-3] * 6, [3] * 6
    for trial in range(50):
        target = tuple(rng.randint(-3, 3) for _ in range(6))
        parent = tuple(mutate((0,) * 6, low, high, rng))
        offspring = offspring_of(parent, 12, low, high, rng)
        survivors = [4, 2, 1] if trial % 2 else [3, 1]
        samples = draw_samples(rng, 20, [2, 5, 9][: len(survivors)])
        fitness = toy_fitness(target)
        assert staged_selection(
            offspring, parent, survivors, samples, one_by_one(fitness)
        ) == plain_selection(offspring, parent, survivors, samples, fitness)
    # the parent competes only in the last stage: a parent that is best wins only there
    calls = []

    def counting(genome, sample):
        calls.append(genome)
        return 0.0 if genome == (9,) else 1.0

    winner, _ = staged_selection([(1,), (2,), (3,)], (9,), [2, 1], [[0], [1]], one_by_one(counting))
    assert winner == (9,) and calls.count((9,)) == 1 and calls.index((9,)) >= 3  # after stage 1's three


def test_search_finds_a_toy_target():
    low, high = [-3] * 8, [3] * 8
    target = (2, -1, 0, -2, 3, -3, 1, 0)  # level sum 0: reachable by level swaps
    result = evolve(low, high, one_by_one(toy_fitness(target)), 20, 150, 8, [2, 1], [2, 6], seed=1)
    assert sum(result.best) == 0
    assert sum(abs(g - t) for g, t in zip(result.best, target, strict=True)) <= 2
    assert result.best_fitness[-1] < result.best_fitness[0]
    again = evolve(low, high, one_by_one(toy_fitness(target)), 20, 150, 8, [2, 1], [2, 6], seed=1)
    assert again.best == result.best and again.best_fitness == result.best_fitness  # seeded


def test_database_spills_past_its_bound(tmp_path):
    database = LevelDatabase(bound_bytes=40, spill_dir=tmp_path)
    masks = [torch.rand(16, 16) > 0.5 for _ in range(3)]
    for level, mask in enumerate(masks):
        database.put("w", level, mask, torch.arange(int((~mask).sum()), dtype=torch.float32))
    assert database.memory_bytes <= 40 and database.disk_bytes > 0 and any(tmp_path.iterdir())
    for level, mask in enumerate(masks):
        got, kept = database.get("w", level, mask.shape)
        assert torch.equal(got, mask) and kept.numel() == int((~mask).sum())
    database.close()
    assert not any(tmp_path.iterdir())


calibration = partial(token_samples, count=6, seqlen=16)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude"])
def test_evo_end_to_end_on_tiny_opt(method, tmp_path):
    model = tiny_opt()
    layers = prunable_layers(model)
    dense = {name: linear_weight(m).detach().clone() for name, m in layers.items()}
    samples = calibration()
    spec = PruneSpec.create(
        method, 0.7, allocation="evo", evo_generations=2, evo_offspring=4, evo_stage_tokens="32,64",
        evo_survivors="2,1", evo_seed=3, calib_seqlen=16,
    )  # fmt: skip
    record = prune(model, layers, spec, samples, progress=False)
    allocation = record.details["allocation"]
    search = allocation["search"]
    assert len(search["best_kl"]) == 3 and all(v >= 0 for v in search["best_kl"])  # uniform + 2 generations
    assert search["seed"] == 3 and search["offspring"] == 4 and search["stage_tokens"] == [32, 64]
    assert search["stage_sequences"] == [2, 4] and search["seconds"] > 0
    assert set(allocation["layers"]) == set(layers)
    sizes = {n: linear_weight(m).numel() for n, m in layers.items()}
    nominal = sum(allocation["layers"][n] * sizes[n] for n in layers) / sum(sizes.values())
    assert nominal == pytest.approx(allocation["nominal_sparsity"]) and abs(nominal - 0.7) < 1e-3
    assert abs(record.pruned_count() / record.total_count() - 0.7) < 0.01
    for block in allocation["blocks"]:
        assert "realised_sparsity" in block
    # re-applying the written allocation reproduces the run's masks
    path = write_allocation_json(allocation_mapping(allocation, layers), tmp_path)
    again = tiny_opt()
    again_layers = prunable_layers(again)
    replay = prune(again, again_layers, PruneSpec.create(method, 0.7, allocation=str(path), calib_seqlen=16),
                   samples, progress=False)  # fmt: skip
    for name in layers:
        assert torch.equal(replay.changes[name].mask, record.changes[name].mask), name
    restore(model, record)
    for name, module in layers.items():
        assert torch.equal(linear_weight(module), dense[name]), name
    json.dumps(allocation)  # run.json can hold it


def test_evo_options():
    with pytest.raises(PrunescopeError, match="evo-survivors"):
        PruneSpec.create("wanda", 0.7, allocation="evo", evo_stage_tokens="64,128", evo_survivors="2")
    with pytest.raises(PrunescopeError, match="stage-tokens"):
        PruneSpec.create("wanda", 0.7, allocation="evo", evo_stage_tokens="a,b")
    spec = PruneSpec.create("wanda", 0.7, allocation="evo", evo_generations=3)
    assert spec.describe()["evo_generations"] == 3


GENERATIONS, STAGES = 3, 2


def evo_spec(method: str, generations: int = GENERATIONS) -> PruneSpec:
    return PruneSpec.create(
        method, 0.7, allocation="evo", evo_generations=generations, evo_offspring=4,
        evo_stage_tokens="32,64", evo_survivors="2,1", evo_seed=3, calib_seqlen=16,
    )  # fmt: skip


# Recorded on the in-memory search before it learnt to score a stage's candidates at once: its levels
# (those not 0) and best-KL curve for this seed must not move.
RECORDED_LEVELS = {
    "model.decoder.layers.0.self_attn.q_proj": 1,
    "model.decoder.layers.0.fc2": -1,
    "model.decoder.layers.1.self_attn.k_proj": 1,
    "model.decoder.layers.1.fc2": -1,
}
RECORDED_BEST_KL = [
    0.0008034154307097197, 0.0008095691446214914, 0.0008095691446214914, 0.0007638607348781079,
    0.0007952284649945796, 0.0007589455635752529, 0.000779008652898483,
]  # fmt: skip


def test_in_memory_search_is_unchanged():
    model = tiny_opt()
    record = prune(model, prunable_layers(model), evo_spec("wanda", 6), calibration(), progress=False)
    allocation = record.details["allocation"]
    assert {name: level for name, level in allocation["levels"].items() if level} == RECORDED_LEVELS
    assert allocation["search"]["best_kl"] == pytest.approx(RECORDED_BEST_KL, rel=1e-6, abs=0)
    assert allocation["search"]["evaluations"] == 42 and not allocation["search"]["from_disk"]


@pytest.fixture(scope="module")
def tied_llama_dir(tmp_path_factory):
    """A Llama whose output head is tied to the embeddings, as a sharded checkpoint folder."""
    from transformers import LlamaConfig

    from prunescope.checkpoint.synthetic import write_random_checkpoint

    path = tmp_path_factory.mktemp("tied-llama")
    config = LlamaConfig(
        vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True,
    )  # fmt: skip
    write_random_checkpoint(path, config, max_shard_bytes=60_000, tokenizer=False)
    return path


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """GPT-2 (Conv1D weights, tied head, final norm `ln_f`) saved by save_pretrained."""
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(vocab_size=320, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    ).save_pretrained(path)
    return path


def recording_loads(monkeypatch) -> list[tuple[str, int]]:
    """("load" | "release", block index) as the from-disk path calls its `BlockStorage` callbacks."""
    from prunescope.checkpoint import prune_calibrated

    events: list[tuple[str, int]] = []
    original = prune_calibrated.prune_block_by_block

    def recorded(kind: str, callback):
        return lambda index: (events.append((kind, index)), callback(index))[1]

    def wrapped(model, layers, spec, calibration, on_layer, storage, *args):
        storage.load, storage.release = recorded("load", storage.load), recorded("release", storage.release)
        return original(model, layers, spec, calibration, on_layer, storage, *args)

    monkeypatch.setattr(prune_calibrated, "prune_block_by_block", wrapped)
    return events


@pytest.mark.parametrize(
    ("kind", "method"),
    [
        ("opt", "wanda"),
        ("opt", "sparsegpt"),
        ("opt", "magnitude"),
        ("tied-llama", "wanda"),
        ("gpt2", "sparsegpt"),
    ],
)
def test_evo_from_disk_equals_in_memory(kind, method, request, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from prunescope.checkpoint import prune_checkpoint

    folder = request.getfixturevalue(
        {"opt": "tiny_model_dir", "tied-llama": "tied_llama_dir", "gpt2": "gpt2_dir"}[kind]
    )
    spec, samples = evo_spec(method), calibration()
    events = recording_loads(monkeypatch)
    result = prune_checkpoint(folder, tmp_path / "out", spec, "hf", progress=False, calibration=samples)
    streamed = result.details["allocation"]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    memory = prune(model, prunable_layers(model), spec, samples, progress=False).details["allocation"]
    assert streamed["levels"] == memory["levels"] and streamed["layers"] == memory["layers"]
    for key in ("best_kl", "kl_uniform", "kl_final"):
        assert streamed["search"][key] == pytest.approx(memory["search"][key], rel=1e-5, abs=1e-9), key
    search = streamed["search"]
    assert search["from_disk"] and search["evaluations"] == memory["search"]["evaluations"]
    # the model is read once per stage, not once per candidate: the level database's pass, the dense side,
    # the uniform genome, every generation's stages, the winner, then the pruning pass
    passes = 1 + 1 + GENERATIONS * STAGES + 1
    assert search["block_passes"] == passes
    blocks = model.config.num_hidden_layers
    loads = [index for kind, index in events if kind == "load"]
    assert sorted(loads) == sorted(list(range(blocks)) * (1 + passes + 1))
    # one block in memory at a time: each load is released before the next
    assert events == [(kind, i) for i in loads for kind in ("load", "release")]
    # the largest stage's hidden states: the last, 2 survivors + the parent x 4 sequences x 16 tokens, float32
    assert search["candidate_hidden_bytes"] == 3 * 4 * 16 * model.config.hidden_size * 4


def test_prune_command_runs_evo_from_disk(tiny_model_dir, tmp_path):
    from tests.helpers import flags, run_cli

    out = tmp_path / "out"
    options = flags(
        method="wanda", sparsity=0.7, allocation="evo", evo_generations=2, evo_offspring=3,
        evo_stage_tokens="16,32", evo_survivors="2,1", calib_samples=4, calib_seqlen=16, no_progress=True,
    )  # fmt: skip
    run_cli(["prune", tiny_model_dir, "--out", out, *options])
    record = json.loads((out / "prune.json").read_text())
    allocation = record["allocation"]
    assert allocation["search"]["from_disk"] and len(allocation["search"]["best_kl"]) == 3
    written = json.loads((out / "allocation.json").read_text())
    path = write_allocation_json(allocation_mapping(allocation, record["layers"]), tmp_path)
    assert written == json.loads(path.read_text())  # what the in-memory path writes of such a record


def test_after_blocks_refuses_what_it_does_not_know():
    from prunescope.pruning.capture import after_blocks

    model = tiny_llama()
    assert list(after_blocks(model, "model.layers")) == ["model.norm", "lm_head"]
    model.model.extra = torch.nn.Linear(32, 32)  # weights outside the blocks that run who knows where
    with pytest.raises(PrunescopeError, match="model.extra"):
        after_blocks(model, "model.layers")
