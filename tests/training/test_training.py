"""The training engine: accumulation, unfreezing, resume, the coarse loss, early stopping, crashes."""

import json
import math

import pytest
import torch

from cellmorphnet.data.loader import BatchLoader, DeviceArrays
from cellmorphnet.data.prepare import prepare
from cellmorphnet.data.taxonomy import Taxonomy
from cellmorphnet.errors import RunError
from cellmorphnet.model import losses
from cellmorphnet.runs import checkpoint
from cellmorphnet.runs.config import TrainConfig
from cellmorphnet.runtime.devices import Precision
from cellmorphnet.training import engine, schedule
from cellmorphnet.training import fit as fitmod
from cellmorphnet.training.augment import Augment, AugmentConfig
from cellmorphnet.training.data import load_data

TINY = dict(model="test_efficientnet", pretrained=False, batch_size=8, accum_steps=1, limit_batches=3, lr=1e-3,
            image_size=None)


def _tiny_cfg(**kw) -> TrainConfig:
    return TrainConfig(datasets=["sample"], data_size=28, **{**TINY, **kw}).validate()


# --- the coarse-label loss ---------------------------------------------------------------------


def test_coarse_loss_hand_computed():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    # rows of the target table: 0 -> class 0 (fine), 1 -> classes {0, 1} (coarse), 2 -> class 2
    table = torch.tensor([[1.0, 0, 0], [1.0, 1.0, 0], [0, 0, 1.0]])
    e = [math.exp(2), math.exp(1), 1.0]
    p = [v / sum(e) for v in e]
    loss = losses.coarse_cross_entropy(logits, torch.tensor([1, 2]), table)
    assert loss[0].item() == pytest.approx(-math.log(p[0] + p[1]), rel=1e-6)
    e2 = [1.0, 1.0, math.exp(3)]
    assert loss[1].item() == pytest.approx(-math.log(e2[2] / sum(e2)), rel=1e-6)
    # fine targets: identical to torch's cross-entropy, label smoothing included
    fine = losses.coarse_cross_entropy(logits, torch.tensor([0, 2]), table, label_smoothing=0.1)
    ref = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2]), reduction="none", label_smoothing=0.1)
    assert torch.allclose(fine, ref, atol=1e-6)


def test_taxonomy_merges_shared_cell_types_and_keeps_wbc_coarse():
    t = Taxonomy.build(
        {
            "bloodmnist": ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil",
                           "platelet"],
            "bccd": ["RBC", "WBC", "Platelets"],
            "lisc": ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"],
        }
    )  # fmt: skip
    assert t.classes == ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil",
                         "platelet", "rbc")  # fmt: skip
    rbc, wbc, plt = t.targets["bccd"]
    assert [t.classes[i] for i in rbc] == ["rbc"] and [t.classes[i] for i in plt] == ["platelet"]
    assert {t.classes[i] for i in wbc} == {"basophil", "eosinophil", "ig", "lymphocyte", "monocyte", "neutrophil"}
    assert [t.classes[i[0]] for i in t.targets["lisc"]] == ["basophil", "eosinophil", "lymphocyte", "monocyte",
                                                             "neutrophil"]  # fmt: skip
    alone = Taxonomy.build({"bccd": ["RBC", "WBC", "Platelets"]})
    assert alone.classes == ("rbc", "wbc", "platelet")


# --- gradient accumulation ------------------------------------------------------------------------


def test_accumulation_equals_one_big_batch(home):
    import timm

    prepare("sample", home=home, size=28)
    data = load_data(["sample"], {"sample": 28}, home, torch.device("cpu"), False)

    def one_step(batch_size, accum):
        torch.manual_seed(0)
        # GroupNorm, no dropout: the result cannot depend on how the 16 samples are split.
        model = timm.create_model("test_efficientnet_gn", num_classes=len(data.taxonomy.classes))
        cfg = _tiny_cfg(batch_size=batch_size, accum_steps=accum, limit_batches=16 // batch_size, grad_clip=0)
        # train=False: fixed order, no augmentation, so both runs see the same 16 samples
        loader = BatchLoader(data.train, data.space.target_offset, batch_size, 28, [0.5] * 3, [0.5] * 3, train=False,
                             limit_batches=16 // batch_size)  # fmt: skip
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        engine.train_one_epoch(model, loader, opt, sched, scaler=None, device=torch.device("cpu"),
                               precision=Precision(None, False), cfg=cfg, data=data)  # fmt: skip
        return model.state_dict()

    a, b = one_step(8, 2), one_step(16, 1)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=1e-5), k


# --- progressive unfreezing ------------------------------------------------------------------------


def test_unfreezing_stages_on_efficientnet_lite0():
    from cellmorphnet.model.network import create_model

    model = create_model("tf_efficientnet_lite0", num_classes=8, pretrained=False)
    n_blocks = len(model.blocks)
    trainable = set(schedule.apply_stage(model, "head"))
    assert trainable == {
        n for n, _ in model.named_parameters() if n.split(".")[0] in ("conv_head", "bn2", "classifier")
    }
    top = set(schedule.apply_stage(model, "top"))
    blocks_in_top = {int(n.split(".")[1]) for n in top if n.startswith("blocks.")}
    assert blocks_in_top == set(range(n_blocks // 2, n_blocks))
    assert not any(n.startswith(("conv_stem", "bn1")) for n in top)
    everything = set(schedule.apply_stage(model, "all"))
    assert everything == {n for n, _ in model.named_parameters()}
    assert [schedule.stage_for_epoch(e, [5, 10]) for e in (0, 4, 5, 9, 10, 49)] == ["head"] * 2 + ["top"] * 2 + [
        "all"
    ] * 2


def test_frozen_parameters_do_not_move_with_adamw_weight_decay(home):
    prepare("sample", home=home, size=28)
    cfg = _tiny_cfg(epochs=1, unfreeze_epochs=[1, 1], weight_decay=0.5, lr=1e-2)
    run = home / "runs" / "frozen"
    fitmod.fit(cfg, run, home=home)
    torch.manual_seed(cfg.seed)
    from cellmorphnet.model.network import create_model

    start = create_model(cfg.model, num_classes=8, pretrained=False).state_dict()
    end = checkpoint.load(run / "checkpoints" / "last.pt")["model"]
    moved = {k for k in start if not torch.equal(start[k], end[k])}
    assert moved, "the head should have trained"
    assert all(k.split(".")[0] in ("conv_head", "bn2", "classifier") for k in moved), sorted(moved)[:5]


# --- resume, early stopping, crashes -----------------------------------------------------------------


class Stop(Exception):
    pass


def _straight_and_resumed(home, cfg: TrainConfig) -> tuple[dict, dict]:
    """Train ``cfg`` for 2 epochs in one go, and again stopped after epoch 1 and resumed; the two last.pt."""
    prepare("sample", home=home, size=28)
    fitmod.fit(cfg, home / "runs" / "straight", home=home)

    def interrupt_after_first_epoch(kind, **data):
        if kind == "epoch_end" and data["record"]["epoch"] == 1:
            raise KeyboardInterrupt

    summary = fitmod.fit(cfg, home / "runs" / "split", home=home, events=interrupt_after_first_epoch)
    assert summary["state"] == "interrupted" and summary["epochs_done"] == 1
    summary = fitmod.fit(cfg, home / "runs" / "split", home=home, resume=True)
    assert summary["state"] == "finished" and summary["epochs_done"] == 2
    ha = json.loads((home / "runs" / "straight" / "history.json").read_text())
    hb = json.loads((home / "runs" / "split" / "history.json").read_text())
    assert ha["train_loss"] == hb["train_loss"] and ha["val_f1"] == hb["val_f1"]
    return tuple(checkpoint.load(home / "runs" / r / "checkpoints" / "last.pt") for r in ("straight", "split"))


def test_resume_equals_uninterrupted_run(home):
    a, b = _straight_and_resumed(home, _tiny_cfg(epochs=2, unfreeze_epochs=[1, 1], accum_steps=2, limit_batches=4))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_best_checkpoint_and_early_stopping(home, monkeypatch):
    prepare("sample", home=home, size=28)
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9])
    real = fitmod.evaluate

    def scripted(*args, **kwargs):
        out = real(*args, **kwargs)
        out["f1"] = next(scores)
        return out

    monkeypatch.setattr(fitmod, "evaluate", scripted)
    cfg = _tiny_cfg(epochs=5, patience=2, limit_batches=1)
    summary = fitmod.fit(cfg, home / "runs" / "es", home=home)
    assert summary["state"] == "early-stopped"
    assert summary["epochs_done"] == 4 and summary["best_epoch"] == 2 and summary["best_val_f1"] == 0.7
    best = checkpoint.load(home / "runs" / "es" / "checkpoints" / "best.pt")
    last = checkpoint.load(home / "runs" / "es" / "checkpoints" / "last.pt")
    assert best["epoch"] == 2 and last["epoch"] == 4
    assert last["early_stopping"] == {"best_f1": 0.7, "best_epoch": 2, "bad_epochs": 2}
    history = json.loads((home / "runs" / "es" / "history.json").read_text())
    assert len(history["train_loss"]) == 4 and max(history["val_f1"]) == 0.7


def test_crash_mid_epoch_leaves_loadable_checkpoint_and_history(home):
    from cellmorphnet.runs import folders as runs

    prepare("sample", home=home, size=28)

    def crash(kind, **data):
        if kind == "batch" and data["epoch"] == 1:
            raise Stop("disk on fire")

    cfg = _tiny_cfg(epochs=3, limit_batches=10)
    with pytest.raises(Stop):
        fitmod.fit(cfg, home / "runs" / "crash", home=home, events=crash)
    run = home / "runs" / "crash"
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and state["class_names"][0] == "basophil"
    history = json.loads((run / "history.json").read_text())
    assert len(history["train_loss"]) == 1
    st = runs.read_status(run)
    assert st["state"] == "crashed" and "disk on fire" in st["reason"]
    # and it resumes from there
    assert fitmod.fit(cfg, run, home=home, resume=True)["epochs_done"] == 3


def test_second_fit_into_a_used_run_folder_is_refused(home):
    prepare("sample", home=home, size=28)
    cfg = _tiny_cfg(epochs=1, limit_batches=1)
    fitmod.fit(cfg, home / "runs" / "once", home=home)
    with pytest.raises(RunError, match="already holds a run"):
        fitmod.fit(cfg, home / "runs" / "once", home=home)


def test_bf16_autocast_step_on_cpu(home):
    prepare("sample", home=home, size=28)
    summary = fitmod.fit(_tiny_cfg(epochs=1, amp="bf16", limit_batches=2), home / "runs" / "bf16", home=home)
    assert summary["precision"] == "bf16" and summary["state"] == "finished"


# --- the pretrained mapping ----------------------------------------------------------------------------


def test_pretrained_lite0_calls_chelsea_a_cat():
    import numpy as np
    from PIL import Image
    from skimage import data

    from cellmorphnet.model.network import create_model, data_config

    model = create_model("tf_efficientnet_lite0", num_classes=1000, pretrained=True).eval()
    cfg = data_config(model)
    img = np.asarray(Image.fromarray(data.chelsea()).resize((224, 224), Image.BICUBIC), dtype=np.float32) / 255
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        top = model(x).argmax(1).item()
    assert 281 <= top <= 285


def test_mapping_fails_loudly_on_a_shape_mismatch():
    from cellmorphnet.errors import CheckpointError
    from cellmorphnet.model.network import map_state_dict

    target = {"a": torch.zeros(3, 3), "b": torch.zeros(3)}
    with pytest.raises(CheckpointError, match="tensor 1 'y' has shape \\(4,\\)"):
        map_state_dict(target, {"x": torch.zeros(3, 3), "y": torch.zeros(4)}, "test")
    with pytest.raises(CheckpointError, match="1 tensors, but the model has 2"):
        map_state_dict(target, {"x": torch.zeros(3, 3)}, "test")


def test_loader_is_deterministic_per_epoch():
    import numpy as np

    images = np.random.default_rng(0).integers(0, 255, (20, 16, 16, 3), dtype=np.uint8)
    parts = {"d": DeviceArrays(images, np.arange(20) % 2, torch.device("cpu"))}
    loader = BatchLoader(parts, {"d": 0}, 8, 24, [0.5] * 3, [0.5] * 3, train=True, seed=3,
                         augment=Augment(AugmentConfig()))
    loader.set_epoch(4)
    first = [b.images for b in loader]
    loader.set_epoch(4)
    again = [b.images for b in loader]
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert first[0].shape == (8, 3, 24, 24)
    loader.set_epoch(5)
    assert not torch.equal(next(iter(loader)).images, first[0])


def test_class_weights_are_inverse_frequency_and_neutral_on_balanced_data(home, tmp_path):
    import shutil

    from conftest import PBC_TEST_IMAGES

    # imbalanced folder dataset: 12 eosinophils, 4 platelets
    root = tmp_path / "cells"
    for cls, n in (("eosinophil", 12), ("platelet", 4)):
        (root / cls).mkdir(parents=True)
        for p in sorted((PBC_TEST_IMAGES / cls).glob("*.jpg"))[:n]:
            shutil.copy(p, root / cls / p.name)
    name = f"folder:{root}"
    prepare(name, home=home, size=16)
    cfg = TrainConfig(datasets=[name], class_weights=True, **{**TINY}).validate()
    data = load_data(cfg.datasets, {name: 16}, home, torch.device("cpu"), cfg.class_weights)
    counts = torch.bincount(data.train[name].labels_cpu, minlength=2).float()
    expected = counts.sum() / (2 * counts)
    assert torch.allclose(data.class_weights, expected)
    assert data.class_weights[1] > data.class_weights[0]  # the rare class weighs more

    # balanced sample: every weight is 1, so training is identical with and without weighting
    prepare("sample", home=home, size=28)
    a = fitmod.fit(_tiny_cfg(epochs=1, limit_batches=2, class_weights=True), home / "runs" / "w", home=home)
    b = fitmod.fit(_tiny_cfg(epochs=1, limit_batches=2), home / "runs" / "nw", home=home)
    wa = checkpoint.load(home / "runs" / "w" / "checkpoints" / "last.pt")["model"]
    wb = checkpoint.load(home / "runs" / "nw" / "checkpoints" / "last.pt")["model"]
    assert a["state"] == b["state"] == "finished"
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6) for k in wa)


# --- weight average, mixup and cutmix --------------------------------------------------------------


def test_weight_average_follows_the_trained_weights_slowly():
    from cellmorphnet.training.ema import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    avg = WeightAverage(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked.fill_(7)
    avg.update(model)  # first update: decay ramps from (1 + 1) / (10 + 1)
    w = 1 - 2 / 11
    assert torch.allclose(avg.module[0].weight, start["0.weight"] + w)
    assert int(avg.module[1].num_batches_tracked) == 7  # integer buffers are copied, not averaged
    for _ in range(100):
        avg.update(model)
    assert avg.current_decay() == 0.9
    assert torch.allclose(avg.module[0].weight, model[0].weight, atol=1e-4)
    assert not any(p.requires_grad for p in avg.module.parameters())


def test_mixing_off_draws_nothing_and_on_mixes_as_it_says():
    from cellmorphnet.training import mixing

    x = torch.rand(6, 3, 8, 8)
    state = torch.get_rng_state()
    out, partner, lam = mixing.mix_batch(x, 0.0, 0.0)
    assert out is x and partner is None and lam == 1.0
    assert torch.equal(torch.get_rng_state(), state)  # runs without mixing see the same random numbers

    seen = {"mixup": 0, "cutmix": 0, "none": 0}
    torch.manual_seed(0)
    for _ in range(200):
        out, partner, lam = mixing.mix_batch(x, 0.2, 1.0)
        if partner is None:
            seen["none"] += 1
            assert torch.equal(out, x)
            continue
        assert 0.0 <= lam <= 1.0
        if torch.allclose(out, x * lam + x[partner] * (1 - lam)):
            seen["mixup"] += 1
            continue
        seen["cutmix"] += 1
        moved = partner != torch.arange(6)  # an image paired with itself looks unchanged
        box = (out != x)[moved].any(dim=1).any(dim=0)  # the pixels taken from the partner: one box
        assert torch.equal(out[:, :, box], x[partner][:, :, box])
        assert torch.equal(out[:, :, ~box], x[:, :, ~box])
        assert 1 - box.float().mean().item() == pytest.approx(lam, abs=1e-6)
    assert all(v > 20 for v in seen.values()), seen


def test_ema_and_mixing_resume_like_an_uninterrupted_run(home):
    cfg = _tiny_cfg(epochs=2, unfreeze_epochs=[1, 1], accum_steps=2, limit_batches=4, ema=0.9, mixup=0.4, cutmix=1.0)
    a, b = _straight_and_resumed(home, cfg)
    assert a["ema_updates"] == b["ema_updates"] == 4
    for part in ("model", "trained"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    # "model" (what eval and infer load) is the average, not the trained weights
    assert any(not torch.equal(a["model"][k], a["trained"][k]) for k in a["model"] if a["model"][k].is_floating_point())
    saved = json.loads((home / "runs" / "split" / "config.json").read_text())["config"]
    assert (saved["ema"], saved["mixup"], saved["cutmix"]) == (0.9, 0.4, 1.0)
