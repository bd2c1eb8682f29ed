"""Slots from the configuration: one per GPU, a subset, CPU slots on their own cores, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import git
from server.config import ConfigError, load_config
from server.experiment import Plan, experiment_env, ExperimentPaths
from server.slots import SlotError, device_class, plan_slots

H200 = [(0, "NVIDIA H200"), (1, "NVIDIA H200"), (2, "NVIDIA H200"), (3, "NVIDIA H200")]


def configured(workspace: Path, body: str):
    with (workspace / "autoresearch.toml").open("a", encoding="utf-8") as fh:
        fh.write("\n[slots]\n" + body + "\n")
    git(workspace, "commit", "-qam", "slots")
    return load_config(workspace)


def test_one_slot_is_the_default_and_leaves_the_machine_as_it_was(workspace: Path) -> None:
    slots = plan_slots(load_config(workspace), gpus=[])
    assert [(s.index, s.device, s.gpu, s.cpus) for s in slots] == [(0, "cpu", None, None)]
    assert plan_slots(load_config(workspace), gpus=H200)[0].device == "gpu NVIDIA H200"


def test_all_gpus_give_one_slot_each_with_its_own_cuda_visible_devices(workspace: Path) -> None:
    slots = plan_slots(configured(workspace, 'gpus = "all"'), gpus=H200)
    assert [(s.gpu, s.device) for s in slots] == [(str(i), f"cuda:{i} NVIDIA H200") for i in range(4)]


def test_a_listed_subset_of_gpus_is_used_and_an_absent_gpu_is_refused_by_name(workspace: Path) -> None:
    config = configured(workspace, "gpus = [1, 3]")
    assert [s.gpu for s in plan_slots(config, gpus=H200)] == ["1", "3"]
    with pytest.raises(SlotError, match=r"GPU\(s\) \[3\].*visible GPUs are \[0, 1\]"):
        plan_slots(config, gpus=H200[:2])


def test_gpus_of_different_kinds_in_one_run_are_refused(workspace: Path) -> None:
    with pytest.raises(SlotError, match="different kinds"):
        plan_slots(configured(workspace, 'gpus = "all"'), gpus=[(0, "NVIDIA H200"), (1, "NVIDIA A100")])


def test_gpu_slots_without_a_gpu_say_how_to_use_cpu_slots(workspace: Path) -> None:
    with pytest.raises(SlotError, match='slots.gpus = "none"'):
        plan_slots(configured(workspace, 'gpus = "all"'), gpus=[])


def test_cpu_slots_get_disjoint_cores_and_the_experiment_is_told_its_thread_count(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    config = configured(workspace, "count = 3")
    slots = plan_slots(config, gpus=[])
    assert [s.cpus for s in slots] == [(0, 1), (2, 3), (4, 5)]
    plan = Plan(exp_id=1, seed=7, sealed=True, pins=(), cpus=slots[1].cpus, gpu="2")
    paths = ExperimentPaths(workspace / "e", workspace / "p", workspace / "r", workspace / "x")
    env = experiment_env(config, plan, paths, "marker")
    assert env["OMP_NUM_THREADS"] == "2" and env["AUTORESEARCH_CPU_THREADS"] == "2"
    assert env["CUDA_VISIBLE_DEVICES"] == "2"


@pytest.mark.parametrize("body, key", [
    ("gpus = [0, 0]", "slots.gpus"),
    ('gpus = "some"', "slots.gpus"),
    ("count = 0", "slots.count"),
    ('executor = "k8s"', "slots.executor"),
    ("max_queued = -1", "slots.max_queued"),
    ("wavez = 4", "wavez"),
])
def test_bad_slot_settings_are_refused_naming_the_key(workspace: Path, body: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        configured(workspace, body)


def test_device_classes_compare_the_hardware_not_the_index() -> None:
    assert device_class("cuda:0 NVIDIA H200") == device_class("cuda:3 NVIDIA H200") == "NVIDIA H200"
    assert device_class("ray:10.0.0.2 cuda:3 NVIDIA H200") == device_class("gpu NVIDIA H200") == "NVIDIA H200"
    assert device_class("ray:10.0.0.2 cpu") == device_class("cpu") == "cpu" and device_class(None) is None


def test_init_refuses_gpu_slots_on_a_machine_without_gpus_before_anything_is_created(workspace: Path) -> None:
    from server.runstate import init_run, run_dir_for

    config = configured(workspace, 'gpus = "all"')
    if plan_slots_or_none(config) is not None:
        pytest.skip("this machine has a GPU")
    with pytest.raises(SlotError, match="no NVIDIA GPU is visible"):
        init_run(config, "t1")
    assert not (run_dir_for(config, "t1") / "run.json").exists()
    assert "autoresearch/t1" not in git(workspace, "branch", "--list")


def plan_slots_or_none(config):
    try:
        return plan_slots(config)
    except SlotError:
        return None
