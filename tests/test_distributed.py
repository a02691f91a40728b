"""Scale-out: the sharing rule, the launcher environment, and `cloak protect` / `cloak eval` under torchrun with two
CPU processes (gloo) giving the files a single process gives."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cloak.batch import Job, job_weight, share_jobs
from cloak.cli import app
from cloak.distributed import Node, all_sum, barrier, gather, launch_env, rank_device, session, shard, share
from cloak.errors import ConfigError
from cloak.testbed.judge import Judge, JudgeConfig, JudgeNet
from eval.runner import Cell, share_cells

CLOAK = Path(sys.executable).with_name("cloak")

# ------------------------------------------------------------------------------------------------- sharing rule


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_shard_is_disjoint_covering_and_ordered(world_size):
    weights = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    shares = shard(weights, world_size)
    assert len(shares) == world_size
    flat = sorted(i for s in shares for i in s)
    assert flat == list(range(len(weights)))  # every item exactly once
    assert all(s == sorted(s) for s in shares)
    assert shard(weights, world_size) == shares  # a function of the weights only


def test_shard_balances_by_weight_and_is_round_robin_for_equal_weights():
    # heaviest first, each to the lighter rank: 9 -> r0 (9), 6 -> r1 (6), 5 -> r1 (11), 4 -> r0 (13), 3 -> r1 (14),
    # 3 -> r0 (16); round-robin by index would give 9+5+3 = 17 against 13.
    weights = [9, 6, 5, 4, 3, 3]
    shares = shard(weights, 2)
    loads = [sum(weights[i] for i in s) for s in shares]
    assert shares == [[0, 3, 5], [1, 2, 4]] and loads == [16, 14]
    assert shard([1] * 7, 3) == [[0, 3, 6], [1, 4], [2, 5]]
    assert shard([], 2) == [[], []]
    assert shard([0, 0], 3) == [[0], [1], []]


def test_shard_refuses_bad_arguments():
    with pytest.raises(ConfigError, match="`world_size` must be >= 1, got 0"):
        shard([1], 0)
    with pytest.raises(ConfigError, match="item weights must be >= 0, got -1"):
        shard([1, -1], 2)
    with pytest.raises(ConfigError, match="item weights must be >= 0, got nan"):
        shard([float("nan")], 2)


def test_share_single_process_is_everything_in_order():
    items = list("abcde")
    assert share(items, Node()) == items
    two = [share(items, Node(rank=r, world_size=2)) for r in range(2)]
    assert two == [["a", "c", "e"], ["b", "d"]]
    heavy = [share(items, Node(rank=r, world_size=2), weight=lambda s: 10 if s == "a" else 1) for r in range(2)]
    assert heavy == [["a"], ["b", "c", "d", "e"]]


def test_launch_env_reads_torchrun_variables_and_names_bad_ones():
    assert launch_env({}) == Node()
    assert launch_env({"WORLD_SIZE": "1", "RANK": "0"}) == Node()
    node = launch_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (node.rank, node.world_size, node.local_rank, node.is_main, node.label) == (3, 4, 1, False, "rank 3/4: ")
    assert Node().label == "" and Node().is_main
    with pytest.raises(ConfigError, match=r"`RANK` must be in \[0, 2\) \(WORLD_SIZE\), got 2"):
        launch_env({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(ConfigError, match="`RANK` is not set but WORLD_SIZE=2 is; start the processes with torchrun"):
        launch_env({"WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="`WORLD_SIZE` must be an integer, got 'two'"):
        launch_env({"WORLD_SIZE": "two"})
    with pytest.raises(ConfigError, match="`WORLD_SIZE` must be >= 1, got 0"):
        launch_env({"WORLD_SIZE": "0"})


def test_rank_device_gives_each_local_rank_its_gpu_only_when_there_is_one():
    node = Node(rank=3, world_size=4, local_rank=1)
    expected = "cuda:1" if torch.cuda.is_available() else "auto"
    assert rank_device("auto", node) == expected
    assert rank_device("cpu", node) == "cpu" and rank_device("cuda:0", node) == "cuda:0"
    assert rank_device("auto", Node()) == "auto"


def test_single_process_session_and_collectives_are_no_ops(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with session("cpu") as node:
        assert node == Node(device="cpu")
        assert not torch.distributed.is_initialized()
        barrier()
        assert all_sum([2, 3]) == [2, 3] and gather("x") == ["x"]


def test_jobs_are_weighted_by_area_and_cells_shared_by_cache_group(tmp_path):
    Image.new("RGB", (1024, 1024)).save(tmp_path / "big.png")
    Image.new("RGB", (20, 30)).save(tmp_path / "small.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    jobs = [Job(tmp_path / n, tmp_path / "o" / n, tmp_path / "o" / f"{n}.json") for n in ("big.png", "small.png")]
    jobs.append(Job(tmp_path / "broken.png", tmp_path / "o" / "b.png", tmp_path / "o" / "b.json"))
    assert [job_weight(j) for j in jobs] == [4, 1, 1]
    assert [[j.source.name for j in share_jobs(jobs, Node(r, 2))] for r in range(2)] == [
        ["big.png"],
        ["small.png", "broken.png"],
    ]

    cells = [Cell("a", d, at, "db", s) for s in (0, 1) for d in ("clean", "enc") for at in ("none", "jpeg")]
    shares = [share_cells(cells, Node(r, 2)) for r in range(2)]
    assert sorted(c.key for s in shares for c in s) == sorted(c.key for c in cells)
    groups = [{(c.artist, c.defence, c.seed) for c in s} for s in shares]
    assert not groups[0] & groups[1] and len(groups[0]) == len(groups[1]) == 2  # a cache group is one rank's
    assert share_cells(cells, Node()) == cells


# ------------------------------------------------------------------------------------------------- two processes


def _torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 cloak ARGS`` on CPU with gloo, one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--no-python"]
    return subprocess.run(
        [*cmd, str(CLOAK), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )


def _rank_lines(output: str, word: str) -> dict[int, list[str]]:
    """What each rank reported as ``rank R/2: <word> <item>``."""
    found: dict[int, list[str]] = {0: [], 1: []}
    for rank, item in re.findall(rf"rank (\d)/2: {word} (\S+)", output):
        found[int(rank)].append(item)
    return found


def _files(folder: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob(pattern)) if p.is_file()}


def test_protect_on_two_processes_writes_the_single_process_files(tmp_path, tiny_model_dir):
    art = tmp_path / "art"
    (art / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a": (24, 20), "b": (40, 48), "sub/c": (32, 32), "d": (20, 36), "e": (16, 16)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(art / f"{name}.png")
    (art / "broken.png").write_bytes(b"not an image")  # fails on whichever rank gets it; the exit code says so
    args = ["protect", str(art), "--model", str(tiny_model_dir), "--steps", "2", "--device", "cpu"]

    single = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "one")])
    assert single.exit_code == 1 and "5 cloaked, 0 skipped, 1 failed" in single.output, single.output
    multi = _torchrun([*args, "--out", str(tmp_path / "two")], tmp_path)
    log = multi.stdout + multi.stderr
    assert multi.returncode == 1, log

    done, failed = _rank_lines(log, "done"), _rank_lines(log, "FAILED")
    assert done[0] and done[1] and not set(done[0]) & set(done[1])
    assert sorted(done[0] + done[1]) == sorted(str(p) for p in art.rglob("*.png") if p.name != "broken.png")
    assert [f for r in (0, 1) for f in failed[r]] == [f"{art / 'broken.png'}:"]
    shares = re.findall(r"rank \d/2: this share: (\d) cloaked, 0 skipped, (\d) failed", log)
    assert sorted(shares) == sorted([(str(len(done[r])), str(len(failed[r]))) for r in (0, 1)])
    assert log.count("5 cloaked, 0 skipped, 1 failed.") == 1  # the total, from rank 0 only

    one, two = tmp_path / "one", tmp_path / "two"
    assert _files(one, "*.png") == _files(two, "*.png") and len(_files(two, "*.png")) == 5
    for name in _files(one, "*.cloak.json"):
        a, b = (json.loads((folder / name).read_text()) for folder in (one, two))
        a.pop("seconds"), b.pop("seconds")  # wall time: the only field that may differ
        assert a == b, name


EVAL_CONFIG = """
name = "dist"
model = "{model}"
device = "cpu"
seeds = [0, 1]
attacks = ["jpeg:quality=50"]

[[artists]]
name = "alice"
folder = "{art}"
n_train = 2

[[defences]]
method = "encoder"
eps = 8
steps = 2

[[mimics]]
kind = "dreambooth"
steps = 2
lr = 1e-3
batch_size = 2
prior_preservation = true
num_class_images = 2
class_inference_steps = 2

[generation]
n = 2
num_inference_steps = 2
guidance_scale = 3.0

[metrics]
judge = "{judge}"
"""


def test_eval_on_two_processes_gives_the_single_process_cells_and_images(tmp_path, tiny_model_dir):
    from eval.runner import run

    art = tmp_path / "art"
    art.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(art / f"p{i}.png")
    judge_cfg = JudgeConfig(style_names=("a", "b"), widths=(4,), resolution=32)
    torch.manual_seed(0)
    Judge(JudgeNet(judge_cfg), judge_cfg).save(tmp_path / "judge")
    config = tmp_path / "grid.toml"
    config.write_text(EVAL_CONFIG.format(model=tiny_model_dir, art=art, judge=tmp_path / "judge"))

    assert run(config, tmp_path / "one", progress=False, log=lambda s: None) == 0
    multi = _torchrun(["eval", str(config), "--out", str(tmp_path / "two")], tmp_path)
    assert multi.returncode == 0, multi.stdout + multi.stderr
    log = multi.stdout + multi.stderr

    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    keys = [c["key"] for c in one["cells"]]
    assert len(keys) == 6 and [c["key"] for c in two["cells"]] == keys  # clean + encoder x (none, jpeg), 2 seeds
    done = _rank_lines(log, "done")
    ranks = {k.rstrip(":"): r for r in (0, 1) for k in done[r]}
    assert sorted(ranks) == sorted(keys) and len(done[0]) + len(done[1]) == len(keys)  # each cell once
    assert set(ranks.values()) == {0, 1}
    for a, b in zip(one["cells"], two["cells"], strict=True):
        for row in (a, b):
            row.pop("seconds")
        assert a == b, a["key"]
    assert all(c["score_name"] == "style_similarity" for c in two["cells"])
    assert one["summary"] == two["summary"]
    for pattern in ("images/**/*.png", "generations/*.png"):
        assert _files(tmp_path / "one", pattern) == _files(tmp_path / "two", pattern)
    # clean 2; per seed: 2 class images, 2 cloaked, 2 cloaked + jpeg
    assert len(_files(tmp_path / "two", "images/**/*.png")) == 2 + 2 * (2 + 2 + 2)
    assert not list((tmp_path / "two").glob("results.part*.json"))  # merged and removed
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2

    # A group stopped before its merge leaves one checkpoint per rank; a resumed run (any size) picks them up.
    rows = json.loads((tmp_path / "one" / "results.json").read_text())["cells"]
    (tmp_path / "one" / "results.json").unlink()
    for r in (0, 1):
        (tmp_path / "one" / f"results.part{r}.json").write_text(json.dumps({"cells": rows[r::2]}))
    lines = []
    assert run(config, tmp_path / "one", progress=False, log=lines.append) == 0
    assert lines == [] and not list((tmp_path / "one").glob("results.part*.json"))
    assert [c["key"] for c in json.loads((tmp_path / "one" / "results.json").read_text())["cells"]] == keys
