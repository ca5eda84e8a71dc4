"""rewind.train: every method learns on a tiny model and round-trips through the engine; recipes validate; budgets
are exact; runs resume where they stopped.

The tiny model is a random 2-layer Llama (hidden 64) with a 320-token byte-level BPE tokenizer built here, so a
training step costs ~0.1 s on one CPU thread (SmolLM2's 49k vocabulary would make TRL's CPU log-prob kernel the
whole cost).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

import rewind
from rewind import methods
from rewind.cli import main
from rewind.engine import attach
from rewind.errors import RewindError
from rewind.train import available, budget_table, data, inits, load_recipe, recipe_path, train
from rewind.train import checkpoints as ckpt

METHODS = [
    "full",
    "lora",
    "adalora",
    "dora",
    "miss",
    "vera",
    "pissa",
    "milora",
    "keeplora",
    "oft",
    "ia3",
    "loha",
    "lokr",
    "boft",
]
# Learning rates that move each method visibly in 4 steps of a random tiny model.
LR = {"full": 1e-3, "ia3": 1e-1, "vera": 5e-2, "miss": 3e-3}
PROBE = torch.arange(40).view(2, 20) % 300  # token ids for logits comparisons
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # On a busy 2-core machine one thread is several times faster (shared/OFFLINE.md).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A random 2-layer Llama and a small ChatML tokenizer, saved as a base dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    generators = data.reasoning_gym_datasets(load_recipe("sft/lora", ["data.size=100"]).data)
    corpus = [f"{item['question']} <answer>{item['answer']}</answer>" for g in generators.values() for item in g]
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=320,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML,
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-base")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_overrides(base, method: str = "lora") -> list[str]:
    """4 steps on one fixed batch of 8 reasoning-gym items (batch size 8), checkpoints at steps 2 and 4."""
    return [
        f"base={base}",
        "preset=smollm2",
        "device=cpu",
        "data.generators=[basic_arithmetic]",
        "data.size=8",
        "trainer.per_device_train_batch_size=8",
        "trainer.max_steps=4",
        "save_steps=2",
        f"trainer.learning_rate={LR.get(method, 1e-2)}",
        "trainer.lr_scheduler_type=constant",
        "trainer.warmup_steps=0",
        "trainer.disable_tqdm=true",
    ]


def load_base(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def logs(out) -> list[dict]:
    return [json.loads(line) for line in (out / ckpt.LOG_FILE).read_text().splitlines()]


def losses(out) -> list[float]:
    return [entry["loss"] for entry in logs(out) if "loss" in entry]


class ProbeLogits(TrainerCallback):
    """Keeps the trained model's logits on PROBE, computed in memory when training ends."""

    logits = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        model.eval()
        with torch.no_grad():
            self.logits = model(input_ids=PROBE).logits


class StopAt(TrainerCallback):
    """Stops training at a step, as a crash would (the checkpoint of that step is written first)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.fixture(scope="module")
def runs(tiny_base, tmp_path_factory):
    """method -> (run dir, trained logits); each method trains once per module."""
    root = tmp_path_factory.mktemp("runs")
    done: dict[str, tuple] = {}

    def get(method: str):
        if method not in done:
            probe = ProbeLogits()
            out = train(f"sft/{method}", tiny_overrides(tiny_base, method), root / method, callbacks=[probe])
            done[method] = (out, probe.logits)
        return done[method]

    return get


@pytest.mark.parametrize("method", METHODS)
def test_method_learns_and_writes_a_run(runs, method):
    out, _ = runs(method)
    curve = losses(out)
    assert len(curve) == 4 and all(math.isfinite(x) for x in curve)
    assert curve[-1] < curve[0], curve
    side = json.loads((out / methods.SIDECAR).read_text())
    assert side == {"method": method, "base": side["base"], "recipe": f"sft/{method}", "seed": 0, "step": 4}
    assert load_recipe(out / ckpt.RECIPE_FILE).method == method  # the resolved recipe reloads as is
    assert [p.name for p in ckpt.checkpoint_dirs(out)] == ["checkpoint-2", "checkpoint-4"]
    for step, directory in zip((2, 4), ckpt.checkpoint_dirs(out), strict=True):
        assert json.loads((directory / methods.SIDECAR).read_text())["step"] == step
    weights = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    assert (out / weights).is_file() and (out / "checkpoint-4" / weights).is_file()


@pytest.mark.parametrize("method", ["pissa", "milora"])
def test_residual_inits_are_saved_converted(runs, method):
    from rewind import adapters

    out, _ = runs(method)
    for directory in (out, out / "checkpoint-2"):
        config = json.loads((directory / adapters.ADAPTER_CONFIG).read_text())
        assert config["r"] == 2 * load_recipe(f"sft/{method}").peft["r"]
        assert config["init_lora_weights"] is True
        assert methods.identify(config, json.loads((directory / methods.SIDECAR).read_text())).name == method
    assert (out / ckpt.INIT_DIR / adapters.ADAPTER_WEIGHTS).is_file()


def test_keeplora_trains_only_lora_b(runs):
    from safetensors.torch import load_file

    out, _ = runs("keeplora")
    early = load_file(out / "checkpoint-2" / "adapter_model.safetensors")
    final = load_file(out / "adapter_model.safetensors")
    for key in final:
        assert torch.equal(early[key], final[key]) == ("lora_A" in key), key


@pytest.mark.parametrize("method", METHODS)
def test_engine_round_trip_gives_the_trained_model(runs, tiny_base, method):
    out, trained = runs(method)
    base = load_base(tiny_base)
    attach(base, out).set(1.0)
    with torch.no_grad():
        torch.testing.assert_close(base(input_ids=PROBE).logits, trained, rtol=1e-4, atol=1e-4)


def test_grpo_trains_with_a_reasoning_gym_reward(tiny_base, tmp_path):
    over = [
        *tiny_overrides(tiny_base),
        "trainer.per_device_train_batch_size=4",
        "trainer.num_generations=2",
        "trainer.max_completion_length=8",
        "trainer.max_steps=2",
        "save_steps=1",
    ]
    out = train("grpo/lora", over, tmp_path / "grpo")
    entries = [e for e in logs(out) if "loss" in e]
    assert len(entries) == 2
    for entry in entries:
        assert math.isfinite(entry["loss"])
        assert math.isfinite(entry["rewards/reasoning_gym/mean"])  # the reward function ran
        assert "rewards/answer_tags/mean" in entry
    assert (out / "adapter_model.safetensors").is_file() and len(ckpt.checkpoint_dirs(out)) == 2


def test_reasoning_gym_reward_scores_its_items():
    from rewind.train import grpo

    spec = load_recipe("grpo/lora", ["data.size=2", "data.generators=[basic_arithmetic]"]).data
    item = data.reasoning_gym_datasets(spec)["basic_arithmetic"][1]
    reward = grpo.reasoning_gym_reward(spec)
    said = [
        [{"role": "assistant", "content": text}]
        for text in (f"so <answer>{item['answer']}</answer>", f"{item['answer']}", "<answer>no idea</answer>")
    ]
    assert reward(said, rg_source=["basic_arithmetic"] * 3, rg_index=[1] * 3) == [1.0, 1.0, 0.0]
    assert grpo.answer_tags(said) == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("method", ["milora", "keeplora"])
def test_resume_continues_exactly(runs, tiny_base, tmp_path, method):
    """A run stopped at step 2 and resumed ends where the uninterrupted run ends (RNG, optimizer, frozen A,
    converted residual checkpoints reloaded into the training form)."""
    from safetensors.torch import load_file

    whole, _ = runs(method)
    out = tmp_path / method
    train(f"sft/{method}", tiny_overrides(tiny_base, method), out, callbacks=[StopAt(2)])
    assert [p.name for p in ckpt.checkpoint_dirs(out)] == ["checkpoint-2"]
    train(f"sft/{method}", [*tiny_overrides(tiny_base, method), "resume=true"], out)
    assert losses(out) == pytest.approx(losses(whole), rel=1e-6)
    expected, got = load_file(whole / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)


def test_out_dir_guards(runs, tiny_base, tmp_path):
    out, _ = runs("lora")
    with pytest.raises(RewindError, match="already holds a training run"):
        train("sft/lora", tiny_overrides(tiny_base), out)
    with pytest.raises(RewindError, match="differs from .* in peft.r"):
        train("sft/lora", [*tiny_overrides(tiny_base), "resume=true", "peft.r=4"], out)
    with pytest.raises(RewindError, match="no checkpoint"):
        train("sft/lora", [*tiny_overrides(tiny_base), "resume=true"], tmp_path / "empty")


def test_milora_takes_the_minor_components(tiny_base):
    from peft import LoraConfig, get_peft_model

    model = load_base(tiny_base)
    w0 = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["down_proj"]))
    inits.milora(peft_model)
    layer = peft_model.base_model.model.model.layers[0].mlp.down_proj
    delta = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    torch.testing.assert_close(layer.get_base_layer().weight + delta, w0, rtol=0, atol=1e-6)
    u, s, vh = torch.linalg.svd(w0, full_matrices=False)
    torch.testing.assert_close(delta, u[:, -4:] @ torch.diag(s[-4:]) @ vh[-4:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("b_init", ["zero", "gradient"])
def test_keeplora_factors_avoid_the_principal_subspace(b_init):
    torch.manual_seed(0)
    weight, grad = torch.randn(48, 32), torch.randn(48, 32)
    opts = inits.KeepLoRAOptions(energy=0.9, b_init=b_init)
    a, b = inits.keeplora_factors(weight, grad, 4, opts)
    _, s, vh = torch.linalg.svd(weight)
    k = int(((torch.cumsum(s**2, 0) / (s**2).sum()) < 0.9).sum())
    assert 0 < k < 32
    torch.testing.assert_close(a @ vh[:k].T, torch.zeros(4, k), rtol=0, atol=1e-5)  # rows in the residual subspace
    torch.testing.assert_close(a @ a.T, torch.eye(4), rtol=0, atol=1e-5)
    if b_init == "zero":
        assert not b.any()
    else:  # PEFT-Arena: B A is the rank-4 approximation of the projected gradient
        residual = grad - grad @ vh[:k].T @ vh[:k]
        u, sv, v = torch.linalg.svd(residual)
        torch.testing.assert_close(b @ a, u[:, :4] @ torch.diag(sv[:4]) @ v[:4], rtol=0, atol=1e-4)


# the budget tests' model: a config, never a download
BUDGET_LLAMA = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def test_budget_counts_match_peft():
    import peft
    from transformers import AutoModelForCausalLM, LlamaConfig

    rows = budget_table({"model_type": "llama", **BUDGET_LLAMA})
    assert [row.label for row in rows] == available() and len(rows) == 2 * len(METHODS)
    for row in rows:
        options = load_recipe(row.label).peft
        method = methods.get(row.method)
        model = AutoModelForCausalLM.from_config(LlamaConfig(**BUDGET_LLAMA))
        if method.config_class is None:
            assert row.trainable == row.total == sum(p.numel() for p in model.parameters())
            continue
        extra = {"total_step": 10} if method.peft_type == "ADALORA" else {}
        peft_model = peft.get_peft_model(model, method.peft_config(**options, **extra))
        inits.freeze(peft_model, row.method)
        assert (row.trainable, row.total) == peft_model.get_nb_trainable_parameters(), row


@pytest.mark.parametrize(
    "options",
    [
        {"boft_block_size": 8, "target_modules": ["q_proj", "down_proj"]},
        {"boft_block_size": 0, "boft_block_num": 4, "boft_n_butterfly_factor": 2},
        {"boft_block_size": 4, "boft_n_butterfly_factor": 3, "exclude_modules": ["v_proj"]},
        {"boft_block_size": 16, "target_modules": ["q_proj", "up_proj"], "layers_to_transform": 1},
    ],
)
def test_boft_budget_counts_what_peft_builds(options):
    """BOFT counts itself (peft's layers would build dense permutations): the count is what peft trains."""
    import peft
    from tiny import butterflies
    from transformers import AutoModelForCausalLM, LlamaConfig

    (row,) = budget_table({"model_type": "llama", **BUDGET_LLAMA}, [("boft", "boft", options)])
    config = methods.get("boft").peft_config(**options)
    with butterflies(config):
        model = peft.get_peft_model(AutoModelForCausalLM.from_config(LlamaConfig(**BUDGET_LLAMA)), config)
    assert (row.trainable, row.total) == model.get_nb_trainable_parameters()


def test_budget_of_the_paper_models_needs_no_download():
    from rewind.train import recipe_variants

    wanted = {"sft/lora", "sft/oft", "grpo/lora", "grpo/oft"}
    by_label = {
        row.label: row.trainable for row in budget_table("qwen", [v for v in recipe_variants() if v[0] in wanted])
    }
    assert by_label["sft/lora"] == 20_185_088  # r8 on Qwen2.5-7B: the paper's ~20M
    assert by_label["grpo/lora"] == 40_370_176  # r16: ~40M
    assert abs(by_label["sft/oft"] / by_label["sft/lora"] - 1) < 0.15  # b32 ~ r8
    assert abs(by_label["grpo/oft"] / by_label["grpo/lora"] - 1) < 0.15  # b64 ~ r16


def test_overrides_are_typed_and_dotted():
    recipe = load_recipe(
        "sft/lora",
        ["trainer.learning_rate=1e-4", "peft.r=16", "data.generators=[chain_sum]", "seed=3", "trainer.bf16=false"],
    )
    assert recipe.trainer["learning_rate"] == 1e-4  # PyYAML reads "1e-4" as a string: coerced
    assert recipe.peft == {"r": 16, "lora_alpha": 16, "lora_dropout": 0.05}
    assert recipe.data.generators == ["chain_sum"] and recipe.seed == 3 and recipe.trainer["bf16"] is False


@pytest.mark.parametrize(
    "override, message",
    [
        ("lerning_rate=1", "unknown key 'lerning_rate'"),
        ("trainer.lerning_rate=1", "trainer.lerning_rate: not a field of SFTConfig"),
        ("peft.rank=4", "peft.rank: not a field of LoraConfig"),
        ("data.sise=4", "unknown key 'sise'"),
        ("trainer.learning_rate=fast", "trainer.learning_rate: expected a number"),
        ("seed=1.5", "seed: expected an integer"),
        ("resume=maybe", "resume: expected true or false"),
        ("trainer.output_dir=/x", "use the out_dir argument"),
        ("kind=dpo", "kind: 'dpo' is not one of sft, grpo"),
        ("method=qlora", "unknown method 'qlora'"),
        ("data.seed=99990", "training seeds must lie in"),
        ("init.energy=0.5", "init: method lora has no init options"),
        ("preset=gpt", "preset gpt: no"),
        ("no_equals_sign", "expected key=value"),
    ],
)
def test_bad_overrides_fail_in_one_line(override, message):
    with pytest.raises(RewindError, match=message) as info:
        load_recipe("sft/lora", [override])
    assert "\n" not in str(info.value)


def test_grpo_recipe_checks():
    with pytest.raises(RewindError, match="adalora needs beta=0"):
        load_recipe("grpo/adalora", ["trainer.beta=0.04"])
    with pytest.raises(RewindError, match="reward.type=reasoning_gym needs data.source=reasoning_gym"):
        load_recipe("grpo/lora", ["base=qwen", "reward.type=reasoning_gym"])


def test_presets_follow_the_base_alias():
    smol, qwen = load_recipe("grpo/oft"), load_recipe("grpo/oft", ["base=qwen"])
    assert (smol.preset, smol.data.source, smol.reward.type) == ("smollm2", "reasoning_gym", "reasoning_gym")
    assert (qwen.preset, qwen.base, qwen.data.source, qwen.reward.type) == ("qwen", "qwen", "hub", "math")
    assert qwen.trainer["learning_rate"] == 1e-5 and qwen.trainer["num_generations"] == 8  # recipe over preset
    assert load_recipe("sft/lora", ["preset=llama"]).base == "llama"  # the preset's base
    assert load_recipe("sft/lora", ["base=qwen", "domain=medical"]).data.filters == ["data_source != openr1"]


@pytest.mark.parametrize("preset", ["smollm2", "qwen", "llama"])
def test_every_shipped_recipe_resolves(preset):
    names = available()
    assert len(names) == 2 * len(METHODS) and {n.split("/")[1] for n in names} == set(METHODS)
    for name in names:
        recipe = load_recipe(name, [f"preset={preset}"])
        assert recipe.kind == name.split("/")[0] and recipe.method == name.split("/")[1]


def test_shipped_recipes_are_package_data():
    # An installed rewind has no checkout around it (tests/test_install.py runs one); the checkout's recipes/ links
    # to the same files.
    from rewind.train import recipe

    assert recipe_path("sft/lora") == recipe.RECIPES_DIR / "sft" / "lora.yaml"
    assert Path(str(recipe.RECIPES_DIR)).parent == Path(rewind.__file__).parent
    top = Path(rewind.__file__).parents[1] / "recipes"
    if top.exists():  # a checkout
        assert top.resolve() == Path(str(recipe.RECIPES_DIR)).resolve()


def test_train_cli_needs_out_unless_it_prints(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["train", "sft/lora"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "--out" in err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit) as info:
        main(["train", "sft/lora", "peft.r=4", "--print-recipe"])
    assert info.value.code == 0 and load_recipe("sft/lora", ["peft.r=4"]).to_yaml() in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_offline_math_data_is_the_eval_suites_distribution_at_train_seeds():
    from rewind.evaluate.suites import MATH_GENERATORS

    spec = load_recipe("sft/lora").data
    assert data.generator_settings(spec) == {name: dict(args) for name, args in MATH_GENERATORS.items()}
    tuned = load_recipe("sft/lora", ["data.generator_args.chain_sum.max_terms=4"]).data
    assert data.generator_settings(tuned)["chain_sum"] == {**MATH_GENERATORS["chain_sum"], "max_terms": 4}
    with pytest.raises(RewindError, match="products is not among data.generators"):
        load_recipe("sft/lora", ["data.generator_args.products.max_digits=2"])


def test_offline_medical_data_is_refused(tmp_path):
    with pytest.raises(RewindError, match="MedMCQA"):
        train("sft/lora", ["domain=medical"], tmp_path / "med")


@pytest.fixture
def peft_arena_table(tmp_path):
    """A local parquet in PEFT-Arena's verl layout (what SphereLab/PEFTArena-data holds), math and medical rows."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [
        {
            "data_source": source,
            "prompt": [{"role": "user", "content": q}],
            "reward_model": {"ground_truth": truth, "style": "rule"},
            "extra_info": {"question": q, "answer": worked, "index": i},
        }
        for i, (source, q, worked, truth) in enumerate(
            [
                ("openr1", "What is 6*7?", "6*7 = \\boxed{42}", "42"),
                ("medthink", "Which vitamin ...?", "It is B12.", "B"),
                ("openr1", "Half of 1?", "\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
            ]
        )
    ]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_hub_rows_from_a_local_table_in_peft_arena_layout(peft_arena_table):
    path = peft_arena_table
    spec = load_recipe("sft/lora", ["base=qwen", f"data.path={path}"]).data
    table = data.build(spec)
    assert table["prompt"] == [
        [{"role": "user", "content": "What is 6*7?"}],
        [{"role": "user", "content": "Half of 1?"}],
    ]
    assert table["completion"][0] == [{"role": "assistant", "content": "6*7 = \\boxed{42}"}]
    assert table["solution"] == ["$42$", "$\\frac{1}{2}$"]
    medical = data.build(load_recipe("sft/lora", ["base=qwen", "domain=medical", f"data.path={path}"]).data)
    assert medical["solution"] == ["$B$"]
    with pytest.raises(RewindError, match="field 'extra_info.solution' not found"):
        data.build(load_recipe("sft/lora", ["base=qwen", f"data.path={path}", "data.answer=extra_info.solution"]).data)


def test_grpo_on_table_data_with_math_verify(tiny_base, peft_arena_table, tmp_path):
    pytest.importorskip("math_verify")
    from trl.rewards import accuracy_reward

    table = data.build(load_recipe("grpo/lora", ["base=qwen", f"data.path={peft_arena_table}"]).data)
    said = [[{"role": "assistant", "content": "so \\boxed{42}"}], [{"role": "assistant", "content": "\\boxed{1}"}]]
    assert accuracy_reward(said, table["solution"]) == [1.0, 0.0]
    fields = [
        "data.source=hub",
        f"data.path={peft_arena_table}",
        "data.filters=[data_source == openr1]",
        "data.question=extra_info.question",
        "data.answer=extra_info.answer",
        "data.ground_truth=reward_model.ground_truth",
        "reward.type=math",
        "reward.format_weight=0",
    ]
    out = train(
        "grpo/lora",
        [
            *tiny_overrides(tiny_base),
            *fields,
            "trainer.per_device_train_batch_size=4",
            "trainer.num_generations=2",
            "trainer.max_completion_length=8",
            "trainer.max_steps=1",
        ],
        tmp_path / "grpo-math",
    )
    entry = next(e for e in logs(out) if "loss" in e)
    assert math.isfinite(entry["loss"]) and "rewards/accuracy_reward/mean" in entry


def test_hub_data_without_the_hub_fails_in_one_line():
    with pytest.raises(RewindError, match="data.path SphereLab/PEFTArena-data: cannot load"):
        data.build(load_recipe("sft/lora", ["base=qwen"]).data)


def test_run_dirs_list_checkpoints_by_step(tmp_path):
    for step in (10, 2, 100):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-x").mkdir()
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path)] == ["checkpoint-2", "checkpoint-10", "checkpoint-100"]
    shutil.rmtree(tmp_path / "checkpoint-2")
    assert ckpt.latest(tmp_path).name == "checkpoint-100"
