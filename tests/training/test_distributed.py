"""torch.distributed: training and inference under torchrun, on this CPU with the gloo backend.

The slow tests launch the installed command through torchrun (``python -m torch.distributed.run --standalone``)
as users do, and compare with the same command in one process.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cellmorphnet.runtime import distributed
from tests.conftest import EXTERNAL, PBC_TEST_IMAGES


def _env() -> dict[str, str]:
    """The environment as the test set it (its home), one thread per process: 2 processes on 2 cores."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def _torchrun(n: int, *args: str, **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           "-m", "cellmorphnet", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=900, **kw)


def _single(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cellmorphnet", *args], capture_output=True, text=True, env=_env(),
                          timeout=900)  # fmt: skip


# --- fast: the pieces -----------------------------------------------------------------------------------------


def test_blocks_cover_the_list_in_order():
    for n in (0, 1, 2, 7, 240):
        for world in (1, 2, 3, 8):
            blocks = [distributed.block(n, r, world) for r in range(world)]
            assert [i for a, b in blocks for i in range(a, b)] == list(range(n))
            assert max(b - a for a, b in blocks) - min(b - a for a, b in blocks) <= 1


def test_one_process_without_torchrun(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    g = distributed.env_group()
    assert g is distributed.SINGLE and not g.active and g.is_main
    assert g.map(lambda x: x * 2, [1, 2, 3], workers=2) == [2, 4, 6]
    assert g.on_main(lambda: "rank 0") == "rank 0"
    assert g.sum([1, 2.5]) == [1.0, 2.5]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(distributed.RunError, match="outside WORLD_SIZE"):
        distributed.env_group()


def test_a_rank_augments_its_rows_as_the_whole_batch_would():
    """Each rank draws the whole batch's augmentation and keeps its rows: the blocks together are the batch."""
    from cellmorphnet.training.augment import AUGMENTATIONS, Augment

    aug = Augment(AUGMENTATIONS["stain"])
    x = torch.rand(7, 3, 28, 28)
    whole = aug(x, 32, torch.Generator().manual_seed(3))
    parts = [aug(x[a:b], 32, torch.Generator().manual_seed(3), (a, b, 7)) for a, b in
             (distributed.block(7, r, 2) for r in range(2))]  # fmt: skip
    assert torch.allclose(torch.cat(parts), whole, atol=1e-6)


def test_loader_blocks_and_padding():
    """Two ranks' blocks of every planned batch are the batch; a batch smaller than the world pads a rank."""
    import numpy as np

    from cellmorphnet.data.loader import BatchLoader, DeviceArrays

    rng = np.random.default_rng(0)
    arr = DeviceArrays(rng.integers(0, 255, (9, 16, 16, 3), dtype=np.uint8), np.arange(9) % 3, torch.device("cpu"))
    loader = BatchLoader({"d": arr}, {"d": 0}, 4, 16, [0.5] * 3, [0.25] * 3, train=False)
    plan = loader.plan()
    whole = list(loader.batches(plan))
    ranks = [list(loader.batches(plan, (r, 2))) for r in range(2)]
    for i, b in enumerate(whole):
        got = [rk[i] for rk in ranks if not rk[i].padding]
        assert torch.equal(torch.cat([g.images for g in got]), b.images)
        assert torch.equal(torch.cat([g.labels for g in got]), b.labels)
    assert ranks[1][-1].padding and len(ranks[1][-1].labels) == 1  # the last batch holds one sample: rank 1 pads


# --- slow: the command under torchrun ---------------------------------------------------------------------------

STEP_CHECK = """
import json, sys
from pathlib import Path
import torch
from cellmorphnet.runtime import distributed
from cellmorphnet.runs.config import TrainConfig
from cellmorphnet.training import engine, fit

# batch norm without batch statistics: what is left is the gradient arithmetic (blocks, loss scale, accumulation)
engine.schedule.freeze_norm_stats = lambda m: [x.eval() for x in m.modules()
                                                 if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)]
norms, step = [], engine.optimizer_step

def recording_step(optimizer, scaler, params, grad_clip):  # the averaged gradient each step applies
    norms.append(float(torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))))
    return step(optimizer, scaler, params, grad_clip)

engine.optimizer_step = recording_step
group = distributed.start("cpu")
cfg = TrainConfig(datasets=["sample"], epochs=1, batch_size=12, accum_steps=2, limit_batches=7, drop_rate=0.0,
                  unfreeze_epochs=[0, 0], image_size=64, lr=1e-3, device="cpu").validate()
fit.fit(cfg, Path(sys.argv[1]), group=group)
if group.is_main:
    (Path(sys.argv[1]) / "norms.json").write_text(json.dumps(norms))
distributed.stop()
"""


@pytest.mark.slow
def test_two_processes_take_the_same_steps_as_one(tmp_path, home):
    """With batch statistics out of the way, 2 ranks' averaged gradients are one process's whole-batch gradients
    (every step's norm, the last one over a group of one batch), and the weights end where one process's do."""
    script = tmp_path / "step_check.py"
    script.write_text(STEP_CHECK)
    env = {**_env(), "CELLMORPHNET_HOME": str(home), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], capture_output=True, text=True,
                         env=env, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          str(script), str(tmp_path / "two")], capture_output=True, text=True, env=env,
                         timeout=600)  # fmt: skip
    assert two.returncode == 0, two.stderr[-8000:]
    n1 = json.loads((tmp_path / "one" / "norms.json").read_text())
    n2 = json.loads((tmp_path / "two" / "norms.json").read_text())
    assert len(n1) == len(n2) == 4 and min(n1) > 0
    assert n2 == pytest.approx(n1, rel=1e-4)
    a = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoints" / "last.pt", weights_only=True)
    assert a["history"]["train_loss"] == pytest.approx(b["history"]["train_loss"], rel=1e-5)
    # Adam's first steps move a weight by about lr whatever its gradient's size, so a gradient within float noise of
    # zero may step either way: almost every weight agrees to 1e-5 (measured: 323 of 3.4 million did not)
    diffs = torch.cat([(a["model"][k].float() - b["model"][k].float()).abs().flatten() for k in a["model"]])
    assert float((diffs > 1e-5).float().mean()) < 1e-3
    assert b["record"]["distributed"] == {"world_size": 2, "backend": "gloo", "sync_batch_norm": False}


@pytest.mark.slow
def test_two_processes_train_like_one_and_the_run_works_everywhere(tmp_path, home):
    """The embedded sample, default settings of the quick recipe: 2 processes against 1, same global batch."""
    args = ["train", "--datasets", "sample", "--epochs", "3", "--json"]
    one = _single(*args, "--name", "one")
    assert one.returncode == 0, one.stderr[-2000:]
    two = _torchrun(2, *args, "--name", "two")
    assert two.returncode == 0, two.stderr[-8000:]
    summary = json.loads(two.stdout)  # rank 0 alone prints: one JSON document
    assert summary["world_size"] == 2 and summary["state"] == "finished"
    h1 = json.loads((home / "runs" / "one" / "history.json").read_text())
    h2 = json.loads((home / "runs" / "two" / "history.json").read_text())
    # Tolerance: each rank's batch norm sees its half of the batch (torch has no SyncBatchNorm on CPUs) and
    # dropout draws differ; measured on this machine: train loss within 1.5 %, validation accuracy within 0.035.
    assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=0.05)
    assert h2["val_loss"] == pytest.approx(h1["val_loss"], rel=0.08)
    assert max(abs(a - b) for a, b in zip(h1["val_acc"], h2["val_acc"], strict=True)) <= 0.1
    record = json.loads((home / "runs" / "two" / "config.json").read_text())
    assert record["distributed"]["world_size"] == 2
    status = _single("status", "two")
    assert status.returncode == 0 and "processes" in status.stdout and "2 (torchrun)" in status.stdout
    # the checkpoints load everywhere a run loads
    ev = _single("eval", "two", "--json")
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert json.loads(ev.stdout)["datasets"]["sample"]["metrics"]["n"] == 192
    inf = _single("infer", "two", str(PBC_TEST_IMAGES), "--out", str(tmp_path / "p.csv"))
    assert inf.returncode == 0, inf.stderr[-2000:]
    ex = _single("export", "two", "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert ex.returncode == 0, ex.stderr[-2000:]


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_and_the_run_resumes_in_one_process(tmp_path, home):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "cellmorphnet",
           "train", "--datasets", "sample", "--epochs", "8", "--name", "r"]  # fmt: skip
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    run = home / "runs" / "r"
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (run / "checkpoints" / "last.pt").exists(), "no epoch finished"
    time.sleep(1.0)  # into the next epoch
    rank1 = [p for p in _children(job.pid) if _env_of(p).get("RANK") == "1"]
    assert len(rank1) == 1
    os.kill(rank1[0], signal.SIGKILL)
    out, err = job.communicate(timeout=300)
    assert job.returncode != 0
    ours = [line for line in err.splitlines() if line.lower().startswith(("error:", "interrupted"))]
    assert ours, err[-3000:]  # rank 0's one line: stopped, or its partner gone
    assert not re.search(r'File "[^"]*cellmorphnet/', err), err[-3000:]  # no traceback of ours (torchrun has its own)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)  # intact, loadable
    done = int(state["epoch"])
    assert done >= 1
    hb = json.loads((run / "heartbeat.json").read_text())
    assert hb["state"] == "interrupted"
    resumed = _single("train", "--resume", "r", "--epochs", str(done + 1), "--json")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout)["epochs_done"] == done + 1
    record = json.loads((run / "config.json").read_text())
    assert record["resumed"][-1]["world_size"] == 1 and record["distributed"]["world_size"] == 2


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(d.name))
    return out


def _env_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_process_inference_writes_the_one_process_csv(tmp_path, home):
    """The 240 PBC JPEGs and the other lab's cells: the set-level steps are the whole set's in both."""
    paths = [str(PBC_TEST_IMAGES), str(EXTERNAL)]
    one = _single("infer", "bloodmnist", *paths, "--out", str(tmp_path / "one.csv"))
    two = _torchrun(2, "infer", "bloodmnist", *paths, "--out", str(tmp_path / "two.csv"))
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-8000:]
    a, b = _rows(tmp_path / "one.csv"), _rows(tmp_path / "two.csv")
    assert len(a) == len(b) == 540
    probability = {"confidence", "top1_probability", "top2_probability", "top3_probability"}
    for x, y in zip(a, b, strict=True):
        same = [k for k in x if k not in probability]
        assert [x[k] for k in same] == [y[k] for k in same]
        for k in probability:
            assert abs(float(x[k]) - float(y[k])) <= 1.5e-6  # printed to 6 decimals: one rounding step at most


@pytest.mark.slow
def test_gradcam_and_sort_into_under_torchrun(tmp_path, home):
    files = sorted(PBC_TEST_IMAGES.rglob("*.jpg"))[::27][:9]  # across the classes
    folder = tmp_path / "in"
    folder.mkdir()
    for f in files:
        (folder / f.name).symlink_to(f)
    (folder / "sub").mkdir()
    (folder / "sub" / files[0].name).symlink_to(files[0])  # the same stem twice: named -2 in both
    one = _single("infer", "bloodmnist", str(folder), "--gradcam", str(tmp_path / "g1"), "--sort-into",
                  str(tmp_path / "s1"))  # fmt: skip
    two = _torchrun(2, "infer", "bloodmnist", str(folder), "--gradcam", str(tmp_path / "g2"), "--sort-into",
                    str(tmp_path / "s2"))  # fmt: skip
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-8000:]
    names = {k: sorted(str(p.relative_to(tmp_path / k)) for p in (tmp_path / k).rglob("*") if p.is_file())
             for k in ("g1", "g2", "s1", "s2")}  # fmt: skip
    assert len(names["g1"]) == 10 and names["g1"] == names["g2"]
    assert len(names["s1"]) == 10 and names["s1"] == names["s2"]
    assert "Wrote 10 Grad-CAM overlays" in two.stderr
