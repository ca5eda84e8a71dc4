"""Diagnostics: geometry and spectral measures against independent computations; CSD and activation geometry
against peft's own merge on unpadded inputs; the four commands end to end on a tiny model."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import tinysweep
import torch
from peft import LoraConfig, get_peft_model
from scipy.linalg import orthogonal_procrustes
from tiny import make_adapter
from transformers import AutoModelForCausalLM, AutoTokenizer

from rewind import results, sweep
from rewind.cli import main
from rewind.diagnostics import Finetune, Probe, activations, arena, csd, geometry, spectral
from rewind.diagnostics.data import texts
from rewind.errors import RewindError
from rewind.updates.oft import cayley, rotate

GEN = torch.Generator().manual_seed(0)


def _randn(*shape) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN, dtype=torch.float64)


def _orthogonal(d: int) -> torch.Tensor:
    q, r = torch.linalg.qr(_randn(d, d))
    return q * torch.sign(torch.diagonal(r))


# --- geometry ----------------------------------------------------------------------------------------------


def _hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """CKA from its HSIC definition with an explicit centring matrix (independent of the implementation)."""
    n = x.shape[0]
    h = np.eye(n) - 1.0 / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float(np.trace(k @ l_) / np.sqrt(np.trace(k @ k) * np.trace(l_ @ l_)))


@pytest.mark.parametrize("n,d", [(60, 12), (12, 40)])  # both forms: feature space and token space
def test_cka_is_one_on_itself_invariant_to_rotation_and_scale_and_matches_hsic(n, d):
    x = _randn(n, d)
    y = x @ _randn(d, d) * 0.3 + 0.5 * _randn(n, d)
    assert geometry.linear_cka(x, x) == pytest.approx(1.0, abs=1e-6)
    reference = _hsic_cka(x.numpy(), y.numpy())
    assert geometry.linear_cka(x, y) == pytest.approx(reference, rel=1e-5)
    assert reference < 0.99  # y is a genuinely different representation, so the invariances below mean something
    transformed = 3.7 * x @ _orthogonal(d) + 2.0
    assert geometry.linear_cka(transformed, y) == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize("n,d", [(80, 10), (10, 30)])
def test_procrustes_zero_for_rotated_copy_positive_for_distortion(n, d):
    x = _randn(n, d)
    rotated = geometry.procrustes(x, x @ _orthogonal(d) + 1.5)
    assert rotated["residual"] < 1e-6 and rotated["raw"] > 0.5
    stretched = x * torch.linspace(0.3, 3.0, d, dtype=torch.float64)  # not an isometry
    fit = geometry.procrustes(x, stretched)
    a, b = (x - x.mean(0)).numpy(), (stretched - stretched.mean(0)).numpy()
    r, _ = orthogonal_procrustes(b, a)
    assert fit["residual"] == pytest.approx(np.linalg.norm(b @ r - a) / np.linalg.norm(a), rel=1e-4)
    assert fit["residual"] > 0.1


def test_gram_distortion_and_drift():
    x = _randn(40, 16)
    assert geometry.gram_distortion(x, 2 * x @ _orthogonal(16)) < 1e-6
    assert geometry.gram_distortion(x, x + 0.5 * _randn(40, 16)) > 0.05
    moved = geometry.drift(x, 2 * x)
    assert moved["cosine"] == pytest.approx(1.0) and moved["norm_ratio"] == pytest.approx(2.0)
    assert moved["norm_drift"] == pytest.approx(np.log(2.0))
    assert geometry.drift(x, -x)["cosine_drift"] == pytest.approx(2.0)


# --- spectral ----------------------------------------------------------------------------------------------


def test_fluctuation_smooth_is_zero_rough_is_not_and_matches_a_loop():
    t = torch.linspace(0, 3, 2000, dtype=torch.float64)
    smooth = torch.exp(-t) + 0.2 * torch.sin(t)
    assert spectral.fluctuation(smooth) < 1e-5  # only the reflect-padded ends deviate, by O(slope^2)
    rough = smooth + 0.1 * _randn(2000)
    assert spectral.fluctuation(rough) > 0.03
    x = _randn(9).numpy()
    padded = np.concatenate([x[2:0:-1], x, x[-2:-4:-1]])  # reflect padding by two on each side
    expected = np.mean([abs(x[i] - padded[i : i + 5].mean()) for i in range(9)])
    assert spectral.fluctuation(torch.from_numpy(x)) == pytest.approx(expected, rel=1e-12)
    assert spectral.fluctuation(torch.ones(4)) is None


def test_exact_input_rotation_keeps_the_spectrum():
    w0 = _randn(48, 32).float()
    skew = 0.3 * _randn(2, 16, 16).float()
    skew = skew - skew.transpose(-1, -2)
    scalars, profiles = spectral.profile(w0, rotate(w0, cayley(skew, None)), rotation=True)
    assert scalars["spectrum_shift"] < 1e-5
    assert torch.allclose(profiles["sigma_prime"], profiles["sigma"], rtol=1e-5)
    assert scalars["alignment_mean"] < 0.999 and scalars["retention_deviation_max"] > 1e-3  # the basis did move
    truncated, _ = spectral.profile(w0, rotate(w0, cayley(skew, 3)), rotation=True)  # Neumann: not orthogonal
    assert truncated["spectrum_shift"] > 1e-3


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny Llama with SmolLM2's tokenizer (chat template, real text) saved as a base dir."""
    root = tmp_path_factory.mktemp("diagnostics")
    tinysweep.chat_base(root / "base", layers=3)
    return root


@pytest.fixture(scope="module")
def base(workdir):
    return AutoModelForCausalLM.from_pretrained(workdir / "base").eval()


@pytest.fixture(scope="module")
def lora(workdir, base):
    """A random LoRA adapter and peft's merged model (the independent reference for W')."""
    return workdir / "lora", make_adapter("lora", base, workdir / "lora")


def test_spectral_matches_peft_merge_and_oft_branches(workdir, base, lora, tmp_path):
    report = spectral.run(
        Finetune(lora[0], workdir / "base"), tmp_path / "lora", modules=["q", "down"], device="cpu", plots=False
    )
    assert {r["type"] for r in report["matrices"]} == {"q", "down"} and len(report["matrices"]) == 6
    row = next(r for r in report["matrices"] if r["module"] == "model.layers.1.mlp.down_proj")
    w0 = base.get_submodule(row["module"]).weight.detach().double().numpy()
    w1 = lora[1].get_submodule(row["module"]).weight.detach().double().numpy()
    u, s, vt = np.linalg.svd(w0, full_matrices=False)
    delta_s = np.linalg.svd(w1 - w0, compute_uv=False)
    assert row["effective_rank"] == pytest.approx((delta_s**2).sum() / delta_s[0] ** 2, rel=1e-4)
    assert 1 <= row["effective_rank"] <= 4  # rank-4 LoRA
    deviation = np.abs(np.einsum("ki,kl,il->i", u, w1, vt) - s)
    assert row["retention_deviation_mean"] == pytest.approx(deviation.mean(), rel=1e-4)
    profiles = np.load(tmp_path / "lora" / spectral.PROFILES)
    np.testing.assert_allclose(
        profiles[f"{row['module']}::adaptation"], np.linalg.norm((w1 - w0) @ vt.T, axis=0), rtol=1e-4, atol=1e-6
    )
    shifts = {}
    for kind in ("oft-exact", "oft"):  # exact Cayley rotates; peft's default Neumann series only nearly does
        make_adapter(kind, base, workdir / kind)
        rows = spectral.run(Finetune(workdir / kind, workdir / "base"), tmp_path / kind, device="cpu", plots=False)[
            "matrices"
        ]
        assert all(r["alignment_mean"] is not None for r in rows)
        shifts[kind] = max(r["spectrum_shift"] for r in rows)
    assert shifts["oft-exact"] < 1e-5 < 1e-4 < shifts["oft"]


# --- csd and activations -----------------------------------------------------------------------------------


def _unpadded(model, tokenizer, items, module, where, max_length):
    """A module's inputs or outputs, one text at a time (no padding anywhere)."""
    seen = []
    target = model.get_submodule(module)
    handle = (
        target.register_forward_pre_hook(lambda m, args: seen.append(args[0][0]))
        if where == "input"
        else target.register_forward_hook(lambda m, args, out: seen.append(out[0]))
    )
    with torch.no_grad():
        for text in items:
            model(**tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length))
    handle.remove()
    return torch.cat(seen).double()


def test_csd_matches_independent_computation(workdir, base, lora, tmp_path):
    probe = Probe(data=("general",), limit=5, batch_size=2, max_length=48)
    report = csd.run(
        Finetune(lora[0], workdir / "base"),
        tmp_path,
        probe,
        modules=["q", "v"],
        device="cpu",
        dtype="fp32",
        plots=False,
    )
    module = "model.layers.1.self_attn.q_proj"
    row = next(r for r in report["modules"] if r["module"] == module)["general"]
    tokenizer = AutoTokenizer.from_pretrained(workdir / "base")
    h = _unpadded(base, tokenizer, texts("general-offline", "validation", 5, tokenizer), module, "input", 48)
    w0 = base.get_submodule(module).weight.detach().double()
    dw = lora[1].get_submodule(module).weight.detach().double() - w0
    expected = (h @ dw.T).square().sum(1).mean()
    assert row["n_tokens"] == h.shape[0]
    assert row["csd_abs"] == pytest.approx(float(expected), rel=1e-4)
    assert row["csd_rel"] == pytest.approx(float(expected / (h @ w0.T).square().sum(1).mean()), rel=1e-4)
    assert row["csd_norm"] == pytest.approx(float(expected / (dw.square().sum() * h.square().sum(1).mean())), rel=1e-4)
    assert len(report["modules"]) == 6 and set(report["summary"]) == {"q", "v", "all"}


def test_csd_of_a_zero_update_is_zero(workdir, base, tmp_path):
    untrained = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "down_proj"]))
    untrained.save_pretrained(tmp_path / "zero")  # peft's init: B = 0, so dW = 0 exactly
    report = csd.run(
        Finetune(tmp_path / "zero", workdir / "base"),
        tmp_path / "out",
        Probe(data=("target",), limit=3),
        device="cpu",
        dtype="fp32",
        plots=False,
    )
    results = [r["target"] for r in report["modules"]]
    assert len(results) == 6 and all(r["n_tokens"] > 0 and r["h_norm2"] > 0 for r in results)
    assert all(r["csd_abs"] == 0 and r["csd_rel"] == 0 and r["csd_norm"] is None for r in results)


def test_activations_match_peft_merge_and_leave_the_model_at_base(workdir, lora, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(workdir / "base").eval()
    tokenizer = AutoTokenizer.from_pretrained(workdir / "base")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    probe = Probe(data=("general",), limit=4, batch_size=3, max_length=40)
    report = activations.run(
        Finetune(lora[0], workdir / "base"),
        tmp_path,
        probe,
        modules=["k", "down"],
        layers=[0, 2],
        resident=(model, tokenizer),
        plots=False,
    )
    assert report["probed"] == [
        "model.layers.0.self_attn.k_proj",
        "model.layers.0.mlp.down_proj",
        "model.layers.2.self_attn.k_proj",
        "model.layers.2.mlp.down_proj",
    ]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    items = texts("general-offline", "validation", 4, tokenizer)
    for module in ("model.layers.2.mlp.down_proj", "model.layers.2.self_attn.k_proj"):
        x0 = _unpadded(model, tokenizer, items, module, "output", 40)
        x1 = _unpadded(lora[1], tokenizer, items, module, "output", 40)
        row = next(r for r in report["modules"] if r["module"] == module)
        expected = geometry.compare(x0, x1)
        for key in ("n_tokens", "cka", "procrustes_residual", "gram_distortion", "cosine_drift", "norm_drift"):
            assert row[key] == pytest.approx(expected[key], rel=1e-3, abs=1e-6), key
        assert row["cka"] < 0.999  # the adapter does move these outputs
    layer0_k = next(r for r in report["modules"] if r["module"] == "model.layers.0.self_attn.k_proj")
    assert layer0_k["cka"] == pytest.approx(1.0) and layer0_k["procrustes_raw"] < 1e-6  # k_proj is not adapted


# --- arena -------------------------------------------------------------------------------------------------


def test_correlations_match_numpy():
    x, y = _randn(12).numpy(), _randn(12).numpy()
    c = arena.correlate(list(x), list(y))
    assert c["pearson_r"] == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-9)

    def ranks(v):  # no ties in continuous random data
        return np.argsort(np.argsort(v))

    assert c["spearman_rho"] == pytest.approx(np.corrcoef(ranks(x), ranks(y))[0, 1], rel=1e-9)
    assert arena.correlate([1.0, 2.0], [3.0, 1.0])["pearson_r"] is None  # too few adapters
    assert arena.correlate([1.0, None, 2.0, 3.0], [1.0, 5.0, 2.0, 3.0])["n"] == 3


@pytest.fixture(scope="module")
def sweeps(workdir, lora, base):
    """A real sweep of the LoRA adapter, and copies of it for two more adapters with other general scores."""
    spec = sweep.SweepSpec(
        adapter=str(lora[0]),
        base=str(workdir / "base"),
        alphas=[0, 1],
        target=["general_offline_truthfulqa_mc1"],
        general=["general_offline_date_understanding"],
        limit=2,
        dtype="fp32",
        device="cpu",
    )
    sweep.Sweep(spec, workdir / "sweep-lora").run(progress=False)
    dirs = {"lora": workdir / "sweep-lora"}
    for kind, drop in (("ia3", 3.0), ("oft-exact", 7.0)):
        if not (workdir / kind).is_dir():
            make_adapter(kind, base, workdir / kind)
        d = workdir / f"sweep-{kind}"
        shutil.copytree(dirs["lora"], d)
        record = json.loads((d / results.SWEEP_FILE).read_text())
        record["spec"]["adapter"] = str(workdir / kind)
        (d / results.SWEEP_FILE).write_text(json.dumps(record))
        summary = json.loads((d / sweep.SUMMARY_FILE).read_text())
        summary["final_point"]["test"]["general"] = summary["base_point"]["test"]["general"] - drop
        (d / sweep.SUMMARY_FILE).write_text(json.dumps(summary))
        dirs[kind] = d
    return dirs


def test_find_sweep_and_scores(workdir, sweeps, lora, monkeypatch):
    monkeypatch.chdir(workdir)
    assert arena.find_sweep(workdir / "ia3", workdir) == sweeps["ia3"].resolve()
    row = arena.scores(sweeps["oft-exact"], str(workdir / "base"))
    assert row["split"] == "test" and row["forgetting"] == pytest.approx(7.0)
    with pytest.raises(RewindError, match="no sweep of"):
        arena.find_sweep(workdir / "base", workdir)
    with pytest.raises(RewindError, match="is of base"):
        arena.scores(sweeps["lora"], str(workdir / "elsewhere"))


# --- the commands ------------------------------------------------------------------------------------------


def _cli(argv, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    return captured.out


def test_diagnose_commands_end_to_end(workdir, lora, tmp_path, capsys):
    common = ["--base", workdir / "base", "--adapter", lora[0]]
    out = _cli(
        ["diagnose", "spectral", *common, "--alpha", "0.5", "--modules", "q,down", "--out", tmp_path / "s"], capsys
    )
    report = json.loads((tmp_path / "s" / "spectral.json").read_text())
    assert {"matrices", "summary", "point", "adapter_sha256", "plots"} <= set(report)
    assert report["point"] == "linear(alpha=0.5)" and {"q", "down", "all"} == set(report["summary"])
    assert all((tmp_path / "s" / p).stat().st_size > 5000 for p in report["plots"]) and "spectral.json" in out
    assert {"effective_rank", "fluctuation_retention", "fluctuation_adaptation", "spectrum_shift"} <= set(
        report["matrices"][0]
    )

    _cli(
        [
            "diagnose",
            "csd",
            *common,
            "--data",
            "general",
            "--data",
            "target",
            "--limit",
            "2",
            "--dtype",
            "fp32",
            "--device",
            "cpu",
            "--out",
            tmp_path / "c",
        ],
        capsys,
    )
    report = json.loads((tmp_path / "c" / "csd.json").read_text())
    assert set(report["data"]) == {"general", "target"} and (tmp_path / "c" / "csd.png").is_file()
    assert {"csd_abs", "csd_rel", "csd_norm"} <= set(report["modules"][0]["general"])
    assert report["summary"]["all"]["general_over_target_rel"] > 0

    _cli(
        [
            "diagnose",
            "activations",
            *common,
            "--data",
            "general",
            "--limit",
            "2",
            "--probe-layers",
            "0,2",
            "--dtype",
            "fp32",
            "--device",
            "cpu",
            "--out",
            tmp_path / "a",
        ],
        capsys,
    )
    report = json.loads((tmp_path / "a" / "activations.json").read_text())
    assert len(report["probed"]) == 8 and (tmp_path / "a" / "activations.png").is_file()
    assert {"cka", "procrustes_residual", "gram_distortion", "cosine_drift", "norm_drift"} <= set(report["modules"][0])


def test_report_dir_may_lie_inside_the_adapter_dir(workdir, lora, tmp_path):
    """Unlike an export's --out (issue 13), a report only adds files: a report dir inside the adapter dir is fine."""
    adapter = tmp_path / "lora"
    shutil.copytree(lora[0], adapter)
    report = spectral.run(
        Finetune(adapter, workdir / "base"), adapter / "diagnostics", modules=["q"], device="cpu", plots=False
    )
    assert report["matrices"] and (adapter / "diagnostics" / spectral.JSON).is_file()


def test_diagnose_bad_input_is_one_line(workdir, lora, tmp_path, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "diagnose",
                "spectral",
                "--base",
                str(workdir / "base"),
                "--adapter",
                str(lora[0]),
                "--modules",
                "o",
                "--out",
                str(tmp_path / "x"),
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "--modules o: matches no adapted matrix" in err


def test_arena_end_to_end(workdir, sweeps, tmp_path, capsys):
    adapters_ = [workdir / k for k in ("lora", "ia3", "oft-exact")]
    argv = [
        "arena",
        *adapters_,
        "--base",
        workdir / "base",
        "--diagnostics",
        "spectral,csd",
        "--data",
        "general",
        "--limit",
        "2",
        "--dtype",
        "fp32",
        "--device",
        "cpu",
        "--out",
        tmp_path,
    ]
    for k in ("lora", "ia3", "oft-exact"):
        argv += ["--sweep", sweeps[k]]
    out = _cli(argv, capsys)
    for name in ("arena.md", "arena.csv", "correlations.csv", "arena.json", "arena.png"):
        assert (tmp_path / name).is_file(), name
    report = json.loads((tmp_path / "arena.json").read_text())
    rows = {r["name"]: r for r in report["adapters"]}
    assert [rows[k]["method"] for k in ("lora", "ia3", "oft-exact")] == ["lora", "ia3", "oft"]
    r = 4  # LoRA rank; per layer q 64->64, v 64->32, up 64->128, down 128->64, each A [r, in] + B [out, r]
    assert rows["lora"]["trainable_params"] == 3 * r * ((64 + 64) + (64 + 32) + (64 + 128) + (128 + 64))
    assert [rows[k]["forgetting"] for k in ("ia3", "oft-exact")] == pytest.approx([3.0, 7.0])
    shift = report["correlations"]["spectral.spectrum_shift"]
    values = [rows[k]["spectral.spectrum_shift"] for k in ("lora", "ia3", "oft-exact")]
    forgetting = [rows[k]["forgetting"] for k in ("lora", "ia3", "oft-exact")]
    assert shift["n"] == 3 and shift["pearson_r"] == pytest.approx(np.corrcoef(values, forgetting)[0, 1], rel=1e-9)
    assert report["correlations"]["csd.general.csd_rel"]["n"] == 3
    assert (tmp_path / "ia3" / "csd" / "csd.json").is_file()
    assert (tmp_path / "lora" / "spectral" / "spectral.json").is_file()
    assert "| oft-exact | oft |" in (tmp_path / "arena.md").read_text() and "arena.md" in out


def _arena_argv(workdir, sweeps, kinds, out, *extra):
    argv = [
        "arena",
        *[workdir / k for k in kinds],
        "--base",
        workdir / "base",
        "--diagnostics",
        "spectral,csd",
        "--data",
        "general",
        "--limit",
        "2",
        "--dtype",
        "fp32",
        "--device",
        "cpu",
        "--out",
        out,
        *extra,
    ]
    for k in kinds:
        argv += ["--sweep", sweeps[k]]
    return argv


def _cli_error(argv, capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def arena_of_two(workdir, sweeps, tmp_path_factory):
    """An arena report of lora and ia3, to include."""
    out = tmp_path_factory.mktemp("arena") / "two"
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in _arena_argv(workdir, sweeps, ("lora", "ia3"), out)])
    assert exit_info.value.code == 0
    return out


def test_arena_include_equals_one_arena_over_all(workdir, sweeps, arena_of_two, tmp_path, capsys):
    _cli(_arena_argv(workdir, sweeps, ("lora", "ia3", "oft-exact"), tmp_path / "all"), capsys)
    _cli(_arena_argv(workdir, sweeps, ("oft-exact",), tmp_path / "grown", "--include", arena_of_two), capsys)
    direct, grown = (json.loads((tmp_path / d / "arena.json").read_text()) for d in ("all", "grown"))
    assert (
        grown["probe"]
        == direct["probe"]
        == {
            "data": ["general"],
            "target": "math-offline",
            "split": "validation",
            "limit": 2,
            "batch_size": 8,
            "max_length": 512,
            "include_path": [],
        }
    )
    assert [r.get("from") for r in grown["adapters"]] == [str(arena_of_two / "arena.json")] * 2 + [None]
    assert {r["dtype"] for r in grown["adapters"]} == {"fp32"} and not grown["notes"][1:]  # one precision: no note
    # CPU, fp32, the same inputs: every value is the same float, so equality, not approx.
    assert [{k: v for k, v in r.items() if k != "from"} for r in grown["adapters"]] == direct["adapters"]
    assert grown["correlations"] == direct["correlations"] and grown["correlations"]["csd.general.csd_rel"]["n"] == 3
    assert not (tmp_path / "grown" / "lora").exists() and (tmp_path / "grown" / "oft-exact" / "csd").is_dir()
    assert "| lora | lora |" in (tmp_path / "grown" / "arena.md").read_text()


def test_arena_include_refuses_other_base_diagnostics_or_probe(workdir, sweeps, arena_of_two, tmp_path, capsys):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**json.loads((arena_of_two / "arena.json").read_text()), "base": "someone/else"}))
    cases = [
        (other, (), "its base is someone/else, not"),
        (arena_of_two, ("--diagnostics", "spectral"), "its diagnostics are spectral,csd, not spectral"),
        (arena_of_two, ("--limit", "3"), "its probe differs: --limit 2 (this run: 3)"),
        (tmp_path, (), "not an arena report"),
    ]
    for included, extra, message in cases:  # extra options come last, and the last value of an option wins
        argv = _arena_argv(workdir, sweeps, ("oft-exact",), tmp_path / "out", "--include", included, *extra)
        assert message in _cli_error(argv, capsys)
        assert not (tmp_path / "out").exists()


def test_arena_include_without_probe_notes_it_and_renames(workdir, sweeps, arena_of_two, tmp_path, capsys):
    old = json.loads((arena_of_two / "arena.json").read_text())
    del old["probe"]  # as reports written before the probe was recorded
    (tmp_path / "old.json").write_text(json.dumps(old))
    # Includes only: nothing is computed, no adapter is needed.
    argv = _arena_argv(
        workdir, sweeps, (), tmp_path / "out", "--include", tmp_path / "old.json", "--include", arena_of_two
    )
    _cli(argv, capsys)
    report = json.loads((tmp_path / "out" / "arena.json").read_text())
    assert [r["name"] for r in report["adapters"]] == ["lora", "ia3", "lora-3", "ia3-4"]
    assert (
        f"{tmp_path / 'old.json'} did not record its probe settings: they are assumed to match this run's"
        in report["notes"]
    )
    assert "did not record its probe" in (tmp_path / "out" / "arena.md").read_text()
    assert sum("did not record" in n for n in report["notes"]) == 1
    assert not any("computed in" in n for n in report["notes"])
    old["adapters"][0]["dtype"] = "bf16"  # a row probed on a GPU joins CPU-probed ones: the note says so
    (tmp_path / "old.json").write_text(json.dumps(old))
    _cli(argv, capsys)
    report = json.loads((tmp_path / "out" / "arena.json").read_text())
    assert "computed in bf16 and fp32 (column dtype)" in " ".join(report["notes"])
    twice = _cli_error(argv + ["--include", arena_of_two / "arena.json"], capsys)
    assert "given twice" in twice


def test_arena_needs_adapters_or_include(workdir, tmp_path, capsys):
    err = _cli_error(["arena", "--base", workdir / "base", "--out", tmp_path / "out"], capsys)
    assert "rewind arena needs at least one adapter or --include" in err and not (tmp_path / "out").exists()
