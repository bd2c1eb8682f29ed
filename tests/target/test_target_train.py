"""train.py on CPU and the verified evaluation in a separate process."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

import prepare

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
import train  # noqa: E402


def evaluate(run_py, workspace: Path, env: dict[str, str], checkpoint: Path, *extra: str):
    pinned = workspace.parent / "pinned" / "prepare.py"
    return run_py([str(pinned), "evaluate", "--model", str(checkpoint), *extra], cwd=workspace, env=env)


def test_the_device_is_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train.pick_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert train.pick_device() == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert train.pick_device() == "cpu"


def test_flash_attention_3_is_used_on_hopper_when_installed_and_sdpa_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)  # import fails as when not installed
    assert train.select_attention("cuda", (9, 0))[0] == "sdpa"
    calls = []
    fake = types.ModuleType("flash_attn_interface")
    fake.flash_attn_func = lambda q, k, v, causal: (calls.append(causal) or q, None)
    monkeypatch.setitem(sys.modules, "flash_attn_interface", fake)
    name, fn = train.select_attention("cuda", (9, 0))
    q = torch.randn(1, 4, 2, 8)
    assert name == "flash-attention-3" and fn(q, q, q) is q and calls == [True]
    assert train.select_attention("cuda", (8, 0))[0] == "sdpa"
    assert train.select_attention("cpu")[0] == "sdpa"


def test_the_sdpa_fallback_is_causal() -> None:
    _, fn = train.select_attention("cpu")
    q, k, v = (torch.randn(2, 6, 2, 8) for _ in range(3))
    v2 = v.clone()
    v2[:, 4:] += 1.0
    assert torch.allclose(fn(q, k, v)[:, :4], fn(q, k, v2)[:, :4])


def test_mfu_uses_the_peak_of_the_device_found_and_is_unknown_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    assert train.device_peak_flops("cuda") == 989e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100-SXM4-40GB")
    assert train.device_peak_flops("cuda") == 312e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Some Future GPU")
    assert train.device_peak_flops("cuda") is None
    assert train.device_peak_flops("cpu") is None and train.device_peak_flops("mps") is None


def test_the_summary_block_is_a_dash_line_then_aligned_key_value_lines(summary_of) -> None:
    text = train.summary_block({"val_bpb": 1.2345678, "training_seconds": 300.04, "peak_vram_mb": 45060.21,
                                "mfu_percent": "unknown", "num_steps": 953, "depth": 8})
    assert text.splitlines()[0] == "---"
    assert summary_of(text) == {"val_bpb": "1.234568", "training_seconds": "300.0", "peak_vram_mb": "45060.2",
                                "mfu_percent": "unknown", "num_steps": "953", "depth": "8"}
    assert len({line.index(":") + len(line.split(":")[1]) - len(line.split(":")[1].lstrip())
                for line in text.splitlines()[1:]}) == 1  # values start in one column


@pytest.mark.slow
def test_the_evaluator_scores_a_checkpoint_and_prints_its_block(
        run_py, summary_of, workspace: Path, tiny_cache: dict[str, str], random_checkpoint: Path) -> None:
    result = evaluate(run_py, workspace, tiny_cache, random_checkpoint)
    assert result.returncode == 0, result.stderr
    block = summary_of(result.stdout)
    assert float(block["val_bpb"]) > 0 and int(block["eval_tokens"]) == 1024
    assert block["corpus_fingerprint"] == prepare.load_prepared().fingerprint


def test_the_evaluator_scores_the_hidden_holdout_only_when_asked(
        run_py, summary_of, workspace: Path, tiny_cache: dict[str, str], random_checkpoint: Path) -> None:
    plain = summary_of(evaluate(run_py, workspace, tiny_cache, random_checkpoint).stdout)
    both = summary_of(evaluate(run_py, workspace, tiny_cache, random_checkpoint, "--holdout").stdout)
    assert "holdout_bpb" not in plain and float(both["holdout_bpb"]) > 0
    assert both["val_bpb"] == plain["val_bpb"]  # the exported program is a pure function: the same score twice


def test_the_exported_evaluation_equals_the_in_process_evaluation_within_1e_4(
        run_py, summary_of, workspace: Path, tiny_cache: dict[str, str], model_of, tmp_path: Path) -> None:
    model = model_of(workspace / "train.py")
    in_process, _ = prepare.evaluate_model(model.eval(), prepare.load_prepared())
    path = prepare.save_checkpoint(model, tmp_path / "model.pt2")
    sealed = float(summary_of(evaluate(run_py, workspace, tiny_cache, path).stdout)["val_bpb"])
    assert abs(sealed - in_process) < 1e-4


@pytest.mark.slow
def test_a_model_that_looks_at_future_tokens_is_rejected(
        run_py, workspace: Path, tiny_cache: dict[str, str], model_of, tmp_path: Path) -> None:
    peeking = workspace / "peeking_train.py"
    source = (workspace / "train.py").read_text()
    assert "is_causal=True" in source
    peeking.write_text(source.replace("is_causal=True", "is_causal=False"))
    path = prepare.save_checkpoint(model_of(peeking), tmp_path / "peeking.pt2")
    result = evaluate(run_py, workspace, tiny_cache, path)
    assert result.returncode != 0
    assert "causality probe failed" in result.stderr


@pytest.mark.slow
def test_the_evaluator_refuses_a_missing_or_altered_cache(
        run_py, workspace: Path, tiny_cache: dict[str, str], random_checkpoint: Path, tmp_path: Path) -> None:
    missing = dict(tiny_cache, AUTORESEARCH_CACHE=str(tmp_path / "nowhere"))
    result = evaluate(run_py, workspace, missing, random_checkpoint)
    assert result.returncode != 0 and "python prepare.py" in result.stderr
    altered = tmp_path / "altered"
    import shutil
    shutil.copytree(tiny_cache["AUTORESEARCH_CACHE"], altered)
    val = altered / "offline" / "val.bin"
    data = bytearray(val.read_bytes())
    data[10] ^= 0xFF
    val.write_bytes(bytes(data))
    result = evaluate(run_py, workspace, dict(tiny_cache, AUTORESEARCH_CACHE=str(altered)), random_checkpoint)
    assert result.returncode != 0
    assert "does not match the recorded fingerprint" in result.stderr and "python prepare.py" in result.stderr


@pytest.mark.slow
def test_a_tiny_run_trains_saves_a_checkpoint_and_the_evaluator_scores_it(
        run_py, summary_of, workspace: Path, tiny_cache: dict[str, str]) -> None:
    checkpoint = workspace.parent / "ckpt" / "model.pt2"
    env = dict(tiny_cache, AUTORESEARCH_TIME_BUDGET="1", AUTORESEARCH_CHECKPOINT=str(checkpoint))
    result = run_py(["train.py"], cwd=workspace, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    block = summary_of(result.stdout)
    assert "val_bpb" not in block  # under the harness train.py does not score itself
    for key in ("training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent", "total_tokens_M", "num_steps",
                "num_params_M", "depth"):
        assert key in block
    assert block["mfu_percent"] == "unknown" and float(block["peak_vram_mb"]) > 0
    assert float(block["training_seconds"]) >= 1.0 and checkpoint.exists()
    scored = evaluate(run_py, workspace, tiny_cache, checkpoint)
    assert scored.returncode == 0, scored.stderr
    assert 0 < float(summary_of(scored.stdout)["val_bpb"]) < 10


@pytest.mark.slow
def test_run_by_hand_train_py_evaluates_itself_and_prints_val_bpb(
        run_py, summary_of, workspace: Path, tiny_cache: dict[str, str]) -> None:
    result = run_py(["train.py"], cwd=workspace, env=dict(tiny_cache, AUTORESEARCH_TIME_BUDGET="0.5"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert 0 < float(summary_of(result.stdout)["val_bpb"]) < 10


@pytest.mark.slow
def test_a_run_whose_loss_becomes_nan_exits_non_zero_with_a_failure_line(
        run_py, summary_of, workspace: Path, tiny_cache: dict[str, str]) -> None:
    source = (workspace / "train.py").read_text()
    assert "\nEMBED_LR = " in source
    (workspace / "train.py").write_text(source.replace("\nEMBED_LR = ", "\nEMBED_LR = float('nan') or "))
    result = run_py(["train.py"], cwd=workspace, env=dict(tiny_cache, AUTORESEARCH_TIME_BUDGET="30"))
    assert result.returncode == 1
    assert "FAIL: training loss is nan" in result.stdout
    assert "val_bpb" not in summary_of(result.stdout)
