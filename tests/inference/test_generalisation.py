"""Other labs' images: the cell finder on real images, framing measured in the run, stain augmentation,
AdaBN that leaves the checkpoint alone, colour matching, and `eval --on` a labelled folder."""

import dataclasses
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import BCCD_ZIP, PBC_64, PBC_TEST_IMAGES, SHARED, assert_one_line_error, in_home, train_once
from PIL import Image

from cellmorphnet.training.augment import AUGMENTATIONS, AugmentConfig, augment_batch, augment_params
from cellmorphnet.vision.cellfinder import cell_crop, find_nucleus, nucleus_fraction

EXTERNAL = SHARED / "external" / "zheng2018-d1"
QUICK = ["--model", "test_efficientnet", "--no-pretrained", "--batch-size", "16", "--accum-steps", "1",
         "--limit-batches", "2", "--data-size", "28"]  # fmt: skip


def test_cell_finder_on_real_images_from_two_labs():
    for folder in (PBC_TEST_IMAGES, EXTERNAL):
        files = sorted(folder.glob("*/*.*"))
        wbc = [f for f in files if f.parent.name not in ("platelet", "erythroblast")]
        found = [find_nucleus(Image.open(f).convert("RGB")) for f in wbc]
        assert sum(n is not None for n in found) >= 0.97 * len(wbc), folder
        for f, n in zip(wbc, found, strict=True):
            if n is None:
                continue
            w, h = Image.open(f).size
            cx, cy = n.centre
            # the white cell is near the middle of these images, and its nucleus is a sizeable part of it
            assert abs(cx - w / 2) < 0.3 * w and abs(cy - h / 2) < 0.3 * h, f
            assert 0.1 * min(w, h) < n.side < 0.95 * min(w, h), f


def test_cell_finder_on_a_bccd_field_and_on_images_without_a_cell(tmp_path):
    import zipfile

    with zipfile.ZipFile(BCCD_ZIP) as z:
        name = next(n for n in z.namelist() if n.endswith("BloodImage_00001.jpg"))
        (tmp_path / "field.jpg").write_bytes(z.read(name))
    field = Image.open(tmp_path / "field.jpg").convert("RGB")  # a whole 640x480 field with one white cell
    n = find_nucleus(field)
    assert n is not None and n.side < 0.5 * min(field.size)
    assert find_nucleus(Image.new("RGB", (200, 200), "white")) is None
    assert find_nucleus(Image.new("RGB", (200, 200), (230, 200, 200))) is None  # plain background, no cell
    assert find_nucleus(Image.new("RGB", (8, 8), (80, 40, 120))) is None  # too small to search
    rbc_only = np.full((120, 120, 3), 235, np.uint8)
    yy, xx = np.mgrid[:120, :120]
    rbc_only[(yy - 60) ** 2 + (xx - 60) ** 2 < 30**2] = (220, 140, 140)  # a pale red disc, no stained nucleus
    assert find_nucleus(rbc_only) is None


def test_cell_crop_pads_with_the_image_border():
    from cellmorphnet.vision.cellfinder import Nucleus

    img = Image.new("RGB", (50, 50), (200, 100, 50))
    out = cell_crop(img, Nucleus(0, 0, 10, 10), 40)  # centred on the corner: most of it outside the image
    assert out.size == (40, 40)
    assert set(map(tuple, np.asarray(out).reshape(-1, 3))) == {(200, 100, 50)}


def test_framing_fraction_on_training_arrays_is_stable():
    with np.load(PBC_64) as z:
        images, labels = z["train_images"][:400], z["train_labels"][:400, 0]
    wbc = images[np.isin(labels, [0, 1, 3, 4, 5, 6])]
    f, n = nucleus_fraction(wbc)
    assert n >= 0.95 * len(wbc) and 0.4 < f < 0.85


@pytest.mark.parametrize("kind", ["hue", "white_balance", "hed", "blur", "jpeg", "grayscale", "density", "randconv",
                                  "stain_contrast"])
def test_each_stain_augmentation_on_a_fixed_seed(kind):
    with np.load(PBC_64) as z:
        x = torch.from_numpy(z["val_images"][:8]).permute(0, 3, 1, 2).float() / 255
    settings = {"hue": {"hue": 0.1}, "white_balance": {"white_balance": 0.2},
                "hed": {"hed_scale": 0.2, "hed_shift": 0.05}, "blur": {"blur": 1.0}, "jpeg": {"jpeg": 1.0},
                "grayscale": {"grayscale": 1.0}, "density": {"density": 0.3}, "randconv": {"randconv": 1.0},
                "stain_contrast": {"stain_contrast": 0.4}}[kind]
    plain = AugmentConfig(hflip=0, vflip=0, rotation=0, translate=0, scale=(1, 1), brightness=0, contrast=0,
                          saturation=0)  # fmt: skip
    cfg = AugmentConfig(**{**plain.__dict__, **settings})
    base = augment_batch(x, 64, augment_params(8, plain, torch.Generator().manual_seed(1)))
    a = augment_batch(x, 64, augment_params(8, cfg, torch.Generator().manual_seed(1)))
    b = augment_batch(x, 64, augment_params(8, cfg, torch.Generator().manual_seed(1)))
    assert torch.equal(a, b)  # the same seed gives the same batch
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    diff = (a - base).abs().mean().item()
    assert diff > 0.003, (kind, diff)
    if kind in ("blur", "jpeg"):  # these change detail, not colour: the mean colour stays close
        assert (a.mean(dim=(2, 3)) - base.mean(dim=(2, 3))).abs().max() < 0.02
    if kind == "blur":  # blurring lowers the high-frequency energy
        assert (a.diff(dim=3).abs().mean() < base.diff(dim=3).abs().mean()).item()
    if kind == "grayscale":  # no colour left; brightness kept
        assert torch.equal(a[:, 0], a[:, 1]) and torch.equal(a[:, 1], a[:, 2])
        assert (a.mean() - base.mean()).abs() < 0.02
    if kind == "density":  # the optical density scaled per channel: the white background stays white
        white = torch.ones(2, 3, 8, 8)
        assert torch.allclose(augment_batch(white, 8, augment_params(2, cfg, torch.Generator().manual_seed(1))), white)
        assert "stain" in AUGMENTATIONS and AUGMENTATIONS["stain"].hed_scale > 0
    if kind == "randconv":  # drawn after the others, which stay as they were; keeping all of the original is a no-op
        params = augment_params(8, cfg, torch.Generator().manual_seed(1))
        plain_params = augment_params(8, plain, torch.Generator().manual_seed(1))
        assert all(torch.equal(params[k], v) for k, v in plain_params.items())
        params["randconv_keep"] = torch.ones(8)
        assert torch.allclose(augment_batch(x, 64, params), base, atol=1e-6)
        w = augment_params(64, cfg, torch.Generator().manual_seed(1))["randconv_weights"]
        extent = (w != 0).any(dim=(1, 2, 3)).sum(dim=1)  # kernels of 1, 3, 5 or 7 px, centred in 7x7
        assert set(extent.tolist()) == {1, 3, 5, 7}
    if kind == "stain_contrast":  # density to a power, against the nucleus: cytoplasm moves, nucleus stays
        params = augment_params(8, cfg, torch.Generator().manual_seed(1))
        plain_params = augment_params(8, plain, torch.Generator().manual_seed(1))
        assert all(torch.equal(params[k], v) for k, v in plain_params.items())  # drawn last
        gamma = params["stain_contrast"]
        assert ((gamma >= 1 / 1.4) & (gamma <= 1.4)).all() and (gamma < 1).any() and (gamma > 1).any()
        params["stain_contrast"] = torch.ones(8)
        assert torch.allclose(augment_batch(x, 64, params), base, atol=1e-5)  # gamma 1 is a no-op

        def density(t):  # each pixel's optical density magnitude against the image's bright background
            lamp = t.flatten(2).quantile(0.98, dim=2).view(-1, 3, 1, 1)
            return (-torch.log((t / lamp).clamp(1e-3, 1.0))).norm(dim=1)

        d0 = density(x[:4])
        nucleus = d0.flatten(1).quantile(0.95, dim=1).view(-1, 1, 1)
        light = (d0 > 0.2 * nucleus) & (d0 < 0.4 * nucleus)  # cytoplasm-like, a third of the nucleus's density
        dense = (d0 > 0.9 * nucleus) & (d0 < 1.1 * nucleus)
        for g, sign in ((1.4, -1), (1 / 1.4, 1)):
            d1 = density(augment_batch(x[:4], 64, {**{k: v[:4] for k, v in params.items()},
                                                   "stain_contrast": torch.full((4,), g)}))
            ratio = (d1[light] / d0[light]).median().item()
            assert sign * (ratio - 1) > 0.2, (g, ratio)  # 0.3 ** 0.4 = 0.62; 0.3 ** -0.29 = 1.42
            assert abs((d1[dense] / d0[dense]).median().item() - 1) < 0.05


def test_a_wider_blur_range_blurs_more_and_keeps_the_colours():
    with np.load(PBC_64) as z:
        x = torch.from_numpy(z["val_images"][:8]).permute(0, 3, 1, 2).float() / 255
    plain = AugmentConfig(hflip=0, vflip=0, rotation=0, translate=0, scale=(1, 1), brightness=0, contrast=0,
                          saturation=0, blur=1.0)  # fmt: skip
    narrow = augment_batch(x, 96, augment_params(8, plain, torch.Generator().manual_seed(3)))
    wide_cfg = AugmentConfig(**{**plain.__dict__, "blur_max": 2.4})
    wide = augment_batch(x, 96, augment_params(8, wide_cfg, torch.Generator().manual_seed(3)))
    detail = lambda t: t.diff(dim=3).abs().mean(dim=(1, 2, 3))  # noqa: E731
    assert (detail(wide) < detail(narrow)).all()  # the same draws, each sigma larger
    assert (wide.mean(dim=(2, 3)) - narrow.mean(dim=(2, 3))).abs().max() < 0.02  # the kernel is not cut short


@pytest.fixture(scope="module")
def run_home(tmp_path_factory):
    return train_once(tmp_path_factory, "g", "--epochs", "1", *QUICK)[0]


@pytest.fixture
def run(run_home, home):
    return in_home(run_home, home, "g")


def test_framing_and_colour_are_measured_into_the_run(run):
    policy = json.loads((run / "config.json").read_text())["inference"]
    assert policy["crop"] == "cell" and 0.3 < policy["nucleus_fraction"] < 0.9
    assert len(policy["colour"]["mean"]) == 3 and policy["colour"]["image_mean_std"][0] > 0
    assert json.loads((run / "config.json").read_text())["config"]["augment"] == "stain"


def test_infer_frames_cells_and_flags_unusual_colours(cli, run, tmp_path):
    files = sorted((PBC_TEST_IMAGES / "monocyte").glob("*.jpg"))[:6] + sorted((EXTERNAL / "lymphocyte").glob("*"))[:6]
    folder = tmp_path / "mixed"
    folder.mkdir()
    for f in files:
        shutil.copy(f, folder / f.name)
    Image.new("RGB", (100, 100), "white").save(folder / "blank.png")
    out = tmp_path / "p.json"
    r = cli("infer", "g", folder, "--out", out)
    assert r.exit_code == 0, r
    data = json.loads(out.read_text())
    rows = {p["path"].split("/")[-1]: p for p in data["predictions"]}
    assert rows["blank.png"]["framing"] == "centre (no cell found)" and "No cell was found in 1 of 13" in r.stderr
    assert all(rows[f.name]["framing"] == "cell" for f in files)
    assert data["summary"]["framing"] == {"cell": 12, "centre (no cell found)": 1}
    # the other lab's yellow images are far from the training colours; PBC's own are not
    dist = {f.name: rows[f.name]["colour_distance"] for f in files}
    assert min(dist[f.name] for f in files[6:]) > max(dist[f.name] for f in files[:6]), dist
    assert any(rows[f.name]["unlike_training"] for f in files[6:])
    assert not any(rows[f.name]["unlike_training"] for f in files[:6])
    assert "look unlike the training data" in r.stderr
    r = cli("infer", "g", folder, "--crop", "centre", "--out", out)
    framings = {p["path"].split("/")[-1]: p["framing"] for p in json.loads(out.read_text())["predictions"]}
    assert all(framings[f.name] == "centre" for f in files)  # the centre policy looks for no nucleus...
    assert framings["blank.png"] == "centre (no cell found)"  # ...but a blank image holds no cell either way


def test_adapt_bn_and_colour_match_leave_the_checkpoint_untouched(cli, run, tmp_path):
    ckpt = run / "checkpoints" / "best.pt"
    before = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    out_plain, out_adapted = tmp_path / "a.json", tmp_path / "b.json"
    assert cli("infer", "g", EXTERNAL / "monocyte", "--out", out_plain, "--no-adapt-bn", "--no-colour-match",
               ).exit_code == 0  # fmt: skip
    r = cli("infer", "g", EXTERNAL / "monocyte", "--out", out_adapted, "--adapt-bn", "--colour-match")
    assert r.exit_code == 0, r
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == before
    a = json.loads(out_plain.read_text())
    b = json.loads(out_adapted.read_text())
    assert b["summary"]["adaptation"]["adapt_bn"] and b["summary"]["adaptation"]["colour_match"]
    assert [p["confidence"] for p in a["predictions"]] != [p["confidence"] for p in b["predictions"]]
    # and the model in memory is untouched too: a plain run afterwards gives the plain answers again
    assert cli("infer", "g", EXTERNAL / "monocyte", "--out", out_adapted, "--no-adapt-bn",
               "--no-colour-match").exit_code == 0  # fmt: skip
    c = json.loads(out_adapted.read_text())
    assert [p["confidence"] for p in a["predictions"]] == [p["confidence"] for p in c["predictions"]]


def test_adapt_bn_changes_only_batch_norm_statistics(run):
    from cellmorphnet.inference import adapt_batch_norm
    from cellmorphnet.runs.load import load_run_model

    rm = load_run_model(run, "best", "cpu")
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((64, 64))) for f in sorted(EXTERNAL.glob("*/*"))[:40]]
    adapted = adapt_batch_norm(rm.model, arrays, rm.record.inference, rm.device, rm.channels_last)
    before, after = rm.model.state_dict(), adapted.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)


def test_eval_on_a_labelled_folder_with_an_unknown_class_and_broken_files(cli, run, tmp_path):
    root = tmp_path / "mine"
    for cls, src in (("Neutrophils", EXTERNAL / "neutrophil"), ("lymp", EXTERNAL / "lymphocyte"),
                     ("smudge cells", EXTERNAL / "monocyte")):  # fmt: skip
        (root / cls).mkdir(parents=True)
        for f in sorted(src.glob("*"))[:7]:
            shutil.copy(f, root / cls / f.name)
    (root / "Neutrophils" / "empty.png").write_bytes(b"")
    (root / "lymp" / "notes.png").write_text("not an image")
    r = cli("eval", "g", "--on", root, "--classes", "wbc", "--json")
    assert r.exit_code == 0, r
    report = json.loads(r.stdout)
    assert report["unknown_folders"] == {"smudge cells": 7}
    assert report["per_class_images"] == {"lymphocyte": 7, "neutrophil": 7}
    assert len(report["skipped"]) == 2 and report["predicted"] == 14
    assert report["colour_step"] == {"none": 14}  # 14 cells: too few to measure the set's stain
    assert report["classes_scored"] == ["basophil", "eosinophil", "ig", "lymphocyte", "monocyte", "neutrophil"]
    m = report["metrics"]
    assert sum(map(sum, m["confusion_matrix"])) == 14 and 0 <= report["balanced_accuracy_min5"] <= 1
    written = run / "eval" / "on-mine"
    assert (written / "metrics.json").exists() and (written / "on_confusion.png").exists()
    human = cli("eval", "g", "--on", root)
    assert human.exit_code == 0 and "matches none of the run's classes" in human.stderr
    assert (run / "eval" / "on-mine-2" / "metrics.json").exists()  # the first report kept, not overwritten
    assert_one_line_error(cli("eval", "g", "--on", root, "--classes", "platelet"), "--classes leaves out")
    assert_one_line_error(cli("eval", "g", "--on", tmp_path / "nothing"), "is not a folder")
    (tmp_path / "a-file").write_text("")
    r = cli("eval", "g", "--on", root, "--out", tmp_path / "a-file" / "e")
    assert_one_line_error(r, "a-file is not a folder")
    assert "Classifying" not in r.stderr


def _pbc_sample(n: int = 24) -> list[np.ndarray]:
    files = sorted(PBC_TEST_IMAGES.glob("*/*.jpg"))[:: max(1, 240 // n)][:n]
    return [np.asarray(Image.open(f).convert("RGB").resize((96, 96), Image.BICUBIC)) for f in files]


def test_stain_normalisation_undoes_another_lamp_and_stain():
    from cellmorphnet.vision import colour

    originals = _pbc_sample()
    ref = colour.stain_reference(np.stack(originals))
    assert ref is not None and len(ref.nucleus_density) == 3
    # the same cells as another lab would record them: a yellow lamp, and each channel's optical density
    # scaled (another stain batch, staining time and camera response)
    lamp, power = np.array([255.0, 250.0, 180.0]), np.array([0.8, 1.4, 1.7])

    def other_lab(a: np.ndarray) -> np.ndarray:
        od = -np.log(np.clip((a + 1.0) / (np.asarray(ref.background) + 1.0), 1e-3, 1.0))
        return np.clip(lamp * np.exp(-od * power), 0, 255).round().astype(np.uint8)

    shifted = [other_lab(a) for a in originals]
    density = colour.set_density([colour.nucleus_density(a) for a in shifted])
    assert np.abs(np.asarray(density) / ref.nucleus_density - 1).max() > 0.3  # the shift is large
    restored = [colour.normalise_stain(a, density, ref) for a in shifted]
    before = np.mean([np.abs(s.astype(float) - o).mean() for s, o in zip(shifted, originals, strict=True)])
    after = np.mean([np.abs(r.astype(float) - o).mean() for r, o in zip(restored, originals, strict=True)])
    assert after < 0.25 * before and after < 6, (before, after)
    # the training lab's own images are left nearly as they are
    own = colour.set_density([colour.nucleus_density(a) for a in originals])
    same = np.mean([np.abs(colour.normalise_stain(a, own, ref).astype(float) - a).mean() for a in originals])
    assert same < 4, same


def test_stain_normalisation_brings_the_other_labs_nuclei_and_colours_to_the_training_ones():
    from cellmorphnet.vision import colour

    with np.load(PBC_64) as z:
        train = z["train_images"][::40]
    ref, stats = colour.stain_reference(train), colour.lab_stats(train)
    files = sorted(EXTERNAL.glob("*/*"))[::3]
    theirs = [np.asarray(Image.open(f).convert("RGB").resize((64, 64), Image.BICUBIC)) for f in files]
    density = colour.set_density([d for d in map(colour.nucleus_density, theirs) if d is not None])
    assert np.abs(np.asarray(density) / ref.nucleus_density - 1).max() > 0.4  # their nuclei are another colour
    normalised = [colour.normalise_stain(a, density, ref) for a in theirs]
    after = colour.set_density([d for d in map(colour.nucleus_density, normalised) if d is not None])
    assert np.abs(np.asarray(after) / ref.nucleus_density - 1).max() < 0.15
    unlike_before = sum(colour.distance(a, stats) > 4 for a in theirs)
    unlike_after = sum(colour.distance(a, stats) > 4 for a in normalised)
    assert unlike_after < 0.5 * unlike_before, (unlike_before, unlike_after)
    # images without a nucleus give no density, and a set without one is left alone by infer
    assert colour.nucleus_density(np.full((64, 64, 3), 255, np.uint8)) is None


def test_stain_normalisation_runs_on_the_set_only_when_asked_for(cli, run, tmp_path):
    """Without a lab profile each image is read on its own: no stain step by default; --stain-norm measures the
    set sent (and says so in the summary)."""
    policy = json.loads((run / "config.json").read_text())["inference"]
    assert len(policy["stain"]["nucleus_density"]) == 3 and len(policy["stain"]["background"]) == 3
    out = tmp_path / "p.json"
    assert cli("infer", "g", EXTERNAL / "monocyte", "--out", out).exit_code == 0
    default = json.loads(out.read_text())
    assert not default["summary"]["adaptation"]["stain_norm"] and not default["summary"]["stain_norm_applied"]
    assert {p["colour_step"] for p in default["predictions"]} == {None}
    assert cli("infer", "g", EXTERNAL / "monocyte", "--out", out, "--stain-norm").exit_code == 0
    asked = json.loads(out.read_text())
    assert asked["summary"]["stain_norm_applied"] and {p["colour_step"] for p in asked["predictions"]} == {"stain-norm"}


def test_a_run_without_a_stain_reference_is_classified_without_one(run):

    from cellmorphnet.errors import ConfigError
    from cellmorphnet.inference import inference_options
    from cellmorphnet.runs.load import load_run_model

    rm = load_run_model(run, "best", "cpu")
    old = dataclasses.replace(rm.record, inference=dataclasses.replace(rm.record.inference, stain=None))
    assert inference_options(rm.record, stain_norm=True).stain_norm and not inference_options(old).stain_norm
    with pytest.raises(ConfigError, match="no stain reference"):
        inference_options(old, stain_norm=True)


def test_scale_views_see_framed_cells_at_three_crop_sides_and_average_them(cli, tmp_path):
    from cellmorphnet import inference as inf
    from cellmorphnet.data.loader import eval_transform
    from cellmorphnet.runs import folders as runs
    from cellmorphnet.runs.load import load_run_model

    rm = load_run_model(runs.packaged_runs()[runs.PACKAGED], "best", "cpu")  # the shipped (default) model
    policy = rm.record.inference
    files = sorted((EXTERNAL / "lymphocyte").glob("*"))[:4] + sorted((EXTERNAL / "neutrophil").glob("*"))[:4]
    assert inf.crop_sides(policy, True) == inf.SCALE_VIEWS and inf.crop_sides(policy, False) == (1.0,)
    assert inf.crop_sides(policy.with_crop("centre"), True) == (1.0,)  # the exact geometry needs no scale views
    survey = inf.survey_files(files, policy, workers=1, stain_norm=True)
    _, views, _, how, dist = inf.load(files[0], policy, survey, inf.SCALE_VIEWS)
    _, alone, _, how1, dist1 = inf.load(files[0], policy, survey)
    assert views.shape == (3, *alone.shape) and np.array_equal(inf.single_view(views), alone)
    assert (how, dist) == (how1, dist1)  # framing and colour distance reported at the set's own side
    sides = [find_nucleus(v).side for v in views]
    assert sides[0] > sides[1] > sides[2]  # the smaller the crop, the larger the cell appears

    # a batch mixing scale views and single images gives each what it gives alone
    mixed = inf.class_probs(rm.model, [views, alone], policy, device="cpu", tta=True)
    assert np.allclose(mixed[0], inf.class_probs(rm.model, [views], policy, device="cpu", tta=True)[0], atol=1e-5)
    assert np.allclose(mixed[1], inf.class_probs(rm.model, [alone], policy, device="cpu", tta=True)[0], atol=1e-5)
    # ... which is the mean over 3 sides x 4 orientations of the softmax
    x = eval_transform(torch.from_numpy(views), policy.image_size, policy.mean, policy.std)
    with torch.no_grad():
        by_hand = torch.stack([rm.model((x.flip(3) if f else x).rot90(k, dims=(2, 3))).softmax(1)
                               for f, k in inf.ORIENTATIONS_PER_SCALE]).mean((0, 1))  # fmt: skip
    assert np.allclose(mixed[0], by_hand.numpy(), atol=1e-5)

    options = inf.InferenceOptions(policy, tta=True, stain_norm=True, scale_views=True)
    preds, kept = inf.predict_files(rm, files, options, keep_inputs=True)
    assert all(kept[f].shape == alone.shape for f in files)  # Grad-CAM gets the image at the set's side
    assert all(p.framing == "cell" for p in preds)

    # off by default; --scale-views on infer's command line
    assert not inf.inference_options(rm.record).scale_views
    assert inf.inference_options(rm.record, scale_views=True).scale_views
    folder = tmp_path / "cells"
    folder.mkdir()
    for f in files:
        shutil.copy(f, folder / f.name)
    probs = {}
    for flag in ("--scale-views", "--no-scale-views"):
        out = tmp_path / f"{flag}.json"
        r = cli("infer", runs.PACKAGED, folder, "--out", out, flag)
        assert r.exit_code == 0, r
        rows = json.loads(out.read_text())["predictions"]
        probs[flag] = [row["top_k"][0]["probability"] for row in rows]
        assert json.loads(out.read_text())["summary"]["adaptation"]["scale_views"] is (flag == "--scale-views")
    assert probs["--scale-views"] != probs["--no-scale-views"]
