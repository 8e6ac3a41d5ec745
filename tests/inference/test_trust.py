"""Issue 36, answers a lab can trust: a cell's answer is its own (whatever was sent with it, in infer, eval --on and
serve), lab profiles (create, list, show, export, import, use; refused when newer or made for another run), a
verdict on every cell (blank and noise images go to review and are not counted; PBC's own cells are classified),
and split-conformal prediction holding its promise on exchangeable scores."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
from conftest import BCCD_ZIP, EXTERNAL, PBC_TEST_IMAGES, assert_one_line_error
from PIL import Image

from cellmorphnet import api
from cellmorphnet.inference.differential import differential
from cellmorphnet.inference.verdict import CLASSIFIED, REVIEW, fit_conformal, verdict
from cellmorphnet.runs import folders as runs


@pytest.fixture(scope="module")
def shipped():
    return api.load_run(runs.PACKAGED, device="cpu")


def _probs(preds) -> dict:
    return {(p.source.name, p.cell.index if p.cell else 0): np.array([q for _, q in sorted(p.top_k)]) for p in preds
            if p.status == "ok"}  # fmt: skip


def _field(tmp_path, n: str):
    with zipfile.ZipFile(BCCD_ZIP) as z:
        name = next(m for m in z.namelist() if m.endswith(f"JPEGImages/BloodImage_{n}.jpg"))
        (tmp_path / f"{n}.jpg").write_bytes(z.read(name))
    return tmp_path / f"{n}.jpg"


def test_a_cell_gets_the_same_answer_alone_and_among_others(shipped, tmp_path):
    """The platelet folder alone against all eight classes together (the issue: 20 of 30 right alone, 30 with the
    rest); a BCCD field alone against three fields; the server with other files in the same request."""
    platelets = sorted((PBC_TEST_IMAGES / "platelet").glob("*.jpg"))[:6]
    others = [sorted((PBC_TEST_IMAGES / c).glob("*.jpg"))[0] for c in ("neutrophil", "lymphocyte", "eosinophil")]
    others += sorted(EXTERNAL.glob("*/*.png"))[:3]
    alone = _probs(api.predict(shipped, platelets, top_k=8))
    together = _probs(api.predict(shipped, [*others, *platelets], top_k=8))
    assert alone and all(np.abs(alone[k] - together[k]).max() < 1e-5 for k in alone)
    fields = [_field(tmp_path, n) for n in ("00000", "00010", "00176")]
    one = _probs(api.predict(shipped, fields[:1], top_k=8))
    three = _probs(api.predict(shipped, fields, top_k=8))
    assert one and all(np.abs(one[k] - three[k]).max() < 1e-5 for k in one)


def test_serve_answers_a_file_as_infer_does_whatever_else_is_in_the_request(client, shipped):
    files = [sorted((PBC_TEST_IMAGES / "platelet").glob("*.jpg"))[0], sorted(EXTERNAL.glob("*/*.png"))[0]]

    def ask(paths):
        body = client.post("/v1/predict?top_k=8", files=[("files", (p.name, p.read_bytes(), "image/jpeg"))
                                                          for p in paths]).json()  # fmt: skip
        return {r["file"]: ({t["class"]: t["probability"] for t in r["top_k"]}, r["verdict"]) for r in body["results"]}

    alone, together = ask(files[:1]), ask(files)
    name = files[0].name
    assert all(abs(alone[name][0][c] - together[name][0][c]) < 1e-5 for c in alone[name][0])
    assert alone[name][1] == together[name][1] in (CLASSIFIED, REVIEW)
    want = api.predict(shipped, files[:1], top_k=8)[0]
    assert abs(want.confidence - alone[name][0][want.predicted]) < 1e-5 and want.verdict == alone[name][1]


def test_eval_on_scores_each_file_as_it_is_alone(cli, tmp_path):
    """The platelets of a folder score the same alone and beside neutrophils; the report gives the verdicts."""
    reports = []
    for name, types in (("alone", ("platelet",)), ("mixed", ("platelet", "neutrophil"))):
        for c in types:
            (tmp_path / name / c).mkdir(parents=True)
            for p in sorted((PBC_TEST_IMAGES / c).glob("*.jpg"))[:6]:
                shutil.copy(p, tmp_path / name / c / p.name)
        r = cli("eval", "bloodmnist", "--on", tmp_path / name, "--json")
        assert r.exit_code == 0, r
        reports.append(json.loads(r.stdout))
    alone, mixed = (r["metrics"]["per_class"]["platelet"] for r in reports)
    assert alone["recall"] == mixed["recall"] and reports[0]["adaptation"]["lab"] is None
    v = reports[1]["verdicts"]
    assert v["classified"] + v["review"] == 12 and v["classified_accuracy"] is not None


def test_blank_tiny_and_noise_images_go_to_review_and_are_not_counted(shipped, tmp_path):
    Image.new("RGB", (100, 100), "white").save(tmp_path / "blank.png")
    Image.new("RGB", (1, 1), "red").save(tmp_path / "one.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (120, 120, 3), dtype=np.uint8)).save(tmp_path / "noise.png")
    preds = api.predict(shipped, [tmp_path / n for n in ("blank.png", "one.png", "noise.png")])
    assert [p.verdict for p in preds] == [REVIEW] * 3, [(p.path, p.review_reason) for p in preds]
    diff = differential(preds, shipped.classes)
    assert diff["white_cells"] == 0 and diff["nucleated_red_cells"] == 0 and not diff["other"]


def test_pbc_cells_are_classified_and_right(shipped):
    files = [p for c in ("neutrophil", "eosinophil", "lymphocyte", "platelet")
             for p in sorted((PBC_TEST_IMAGES / c).glob("*.jpg"))[:8]]  # fmt: skip
    preds = api.predict(shipped, files)
    classified = [p for p in preds if p.verdict == CLASSIFIED]
    assert len(classified) >= 0.8 * len(files)
    assert all(p.predicted == p.source.parent.name for p in classified)


def test_the_rule_sends_rare_types_off_the_home_lab_and_unlike_cells_to_a_person():
    marks = (0.6, 0.9)
    common = dict(cell_found=True, marks=marks)
    assert verdict(predicted="neutrophil", confidence=0.99, typicality=0.95, **common) == (CLASSIFIED, None)
    assert verdict(predicted="erythroblast", confidence=0.99, typicality=0.95, **common) == (CLASSIFIED, None)
    assert verdict(predicted="erythroblast", confidence=0.99, typicality=0.8, **common)[0] == REVIEW
    assert verdict(predicted="eosinophil", confidence=0.99, typicality=0.95, **common) == (CLASSIFIED, None)
    assert verdict(predicted="eosinophil", confidence=0.99, typicality=0.8, **common) == (
        REVIEW, "a type told by its stain, not vouched for off the home lab")  # granules coloured by another stain
    assert verdict(predicted="neutrophil", confidence=0.99, typicality=0.5, **common)[1] == "unlike the training cells"
    assert verdict(predicted="neutrophil", confidence=0.5, typicality=0.95, **common)[1] == "uncertain"
    assert verdict(predicted="ig", confidence=0.99, typicality=None, cell_found=True, marks=None)[0] == REVIEW
    assert verdict(predicted="neutrophil", confidence=1.0, typicality=1.0, cell_found=False, marks=marks) == (
        REVIEW, "no cell found")


def test_the_differential_counts_classified_cells_and_says_how_many_await_review():
    class P:
        error, no_cells, cell, cell_found, low_confidence, source = None, False, None, True, False, "x"

        def __init__(self, cls, v):
            self.predicted, self.verdict = cls, v

    preds = [P("neutrophil", CLASSIFIED)] * 3 + [P("lymphocyte", REVIEW)] * 2 + [P("erythroblast", REVIEW)]
    d = differential(preds, ["erythroblast", "lymphocyte", "neutrophil"])
    assert d["white_cells"] == 3 and d["nucleated_red_cells"] == 0 and d["awaiting_review"] == 3
    assert d["awaiting_review_percent"] == 50.0


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_conformal_sets_cover_as_promised_on_exchangeable_scores(alpha):
    """Split conformal on synthetic exchangeable cells: over many draws the mean coverage lies within
    [1 - alpha, 1 - alpha + 1 / (n + 1)] (Vovk; Angelopoulos and Bates 2021), give or take the sampling error."""
    rng = np.random.default_rng(7)
    n, m, k = 200, 2000, 5
    covered = []
    for _ in range(40):
        logits = rng.normal(0, 2.0, (n + m, k))
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        y = np.array([rng.choice(k, p=row) for row in p])  # the labels follow the probabilities: calibrated model
        c = fit_conformal(p[:n], y[:n], alpha)
        covered.append(c.sets(p[n:])[np.arange(m), y[n:]].mean())
    mean = float(np.mean(covered))
    assert 1 - alpha - 0.01 <= mean <= 1 - alpha + 1 / (n + 1) + 0.01, mean
    tiny = fit_conformal(p[:5], y[:5], 0.05)  # too few cells for 5%: every set holds every type
    assert tiny.qhat == 1.0 and tiny.sets(p[:3]).all()


def test_lab_profiles_from_create_to_use(cli, home, tmp_path):
    folder = tmp_path / "lab"
    folder.mkdir()
    for p in sorted(EXTERNAL.glob("*/*.png"))[::15]:  # 20 of the other lab's cells, no labels needed
        shutil.copy(p, folder / p.name)
    r = cli("lab", "create", "clinic-a", folder)
    assert r.exit_code == 0, r
    assert "Lab profile 'clinic-a' made from 20 cells" in " ".join(r.stderr.split())
    listed = json.loads(cli("lab", "list", "--json").stdout)["profiles"]
    assert [p["name"] for p in listed] == ["clinic-a"] and listed[0]["values"]["stain"]
    shown = json.loads(cli("lab", "show", "clinic-a", "--json").stdout)
    assert shown["version"] == 1 and shown["cells"] == 20 and shown["values"]["side"] > 0
    out = tmp_path / "p.json"
    r = cli("infer", "bloodmnist", folder, "--lab", "clinic-a", "--out", out)
    assert r.exit_code == 0, r
    summary = json.loads(out.read_text())["summary"]
    assert summary["lab"] == "clinic-a" and summary["stain_norm_applied"] and summary["per_image_answers"]
    r = cli("infer", "bloodmnist", folder, "--stain-norm", "--out", out)  # measured on the set sent: it says so
    assert not json.loads(out.read_text())["summary"]["per_image_answers"]

    exported = tmp_path / "clinic-a.json"
    assert cli("lab", "export", "clinic-a", exported).exit_code == 0
    assert_one_line_error(cli("lab", "import", exported), "exists already")
    assert cli("lab", "import", exported, "--name", "clinic-b").exit_code == 0
    newer = json.loads(exported.read_text()) | {"version": 99}
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    assert_one_line_error(cli("lab", "import", tmp_path / "newer.json", "--name", "n"), "newer cellmorphnet")
    other = json.loads(exported.read_text()) | {"checkpoint_sha256": "0" * 64}
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert cli("lab", "import", tmp_path / "other.json", "--name", "other-run").exit_code == 0
    assert_one_line_error(cli("infer", "bloodmnist", folder, "--lab", "other-run"), "was made for run")
    (tmp_path / "junk.json").write_text('{"version": 1, "name": "x"}')
    assert_one_line_error(cli("lab", "import", tmp_path / "junk.json"), "not a valid lab profile")
    assert_one_line_error(cli("infer", "bloodmnist", folder, "--lab", "nobody"), "no lab profile 'nobody'")
    assert_one_line_error(cli("lab", "create", "none", folder), "cannot name a lab profile")


def test_calibrating_a_profile_on_labelled_cells_states_an_error_rate(cli, home, tmp_path):
    lab = tmp_path / "lab"
    labelled = tmp_path / "labelled"
    for c in ("neutrophil", "lymphocyte", "eosinophil", "monocyte"):
        files = sorted((PBC_TEST_IMAGES / c).glob("*.jpg"))
        (labelled / c).mkdir(parents=True)
        lab.mkdir(exist_ok=True)
        for p in files[:10]:
            shutil.copy(p, labelled / c / p.name)
        for p in files[10:15]:
            shutil.copy(p, lab / p.name)
    assert cli("lab", "create", "home-lab", lab).exit_code == 0
    r = cli("lab", "calibrate", "home-lab", "--from", labelled, "--alpha", "0.1", "--json")
    assert r.exit_code == 0, r
    c = json.loads(r.stdout)
    assert c["cells"] == 40 and c["coverage"] >= 0.9 and c["profile"]["values"]["conformal"]["alpha"] == 0.1
    out = tmp_path / "p.json"
    assert cli("infer", "bloodmnist", lab, "--lab", "home-lab", "--out", out).exit_code == 0
    preds = json.loads(out.read_text())["predictions"]
    assert {p["verdict"] for p in preds} <= {CLASSIFIED, REVIEW}
    assert all(p["review_reason"].startswith("prediction set") for p in preds if p["verdict"] == REVIEW)
    assert_one_line_error(cli("lab", "calibrate", "home-lab", "--from", tmp_path / "nothing"), "does not exist")


def test_a_trust_file_is_read_as_data_and_checked(tmp_path):
    from cellmorphnet.errors import RunError
    from cellmorphnet.runs import trust

    shipped_dir = runs.packaged_runs()[runs.PACKAGED]
    ref = trust.load(shipped_dir, 8, 1280)
    assert ref is not None and ref.features.shape == (1024, 1280) and 0 < ref.typical < ref.home < 1
    assert trust.load(tmp_path, 8) is None  # a run from before: no reference, the rule without it
    ref.save(tmp_path)
    again = trust.load(tmp_path, 8, 1280)
    assert np.allclose(again.typicality(ref.features[:5]), ref.typicality(ref.features[:5]))
    assert_raises = pytest.raises(RunError, match="does not fit this run")
    with assert_raises:
        trust.load(tmp_path, 8, 640)  # another network's features
    (tmp_path / trust.TRUST_FILE).write_bytes(b"PK\x03\x04 not an archive")
    with pytest.raises(RunError, match="is damaged"):
        trust.load(tmp_path, 8)
    np.savez(tmp_path / trust.TRUST_FILE, version=np.int64(99), features=np.zeros((2, 3), np.float16))
    with pytest.raises(RunError, match="newer cellmorphnet"):
        trust.load(tmp_path, 8)
