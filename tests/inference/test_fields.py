"""Smear fields: every white cell found in real BCCD fields and in fields composed from real PBC cells, classified
by the shipped model; crops still one cell; huge images refused; the differential's arithmetic; the overlays."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import numpy as np
import pytest
from conftest import BCCD_ZIP, PBC_TEST_IMAGES
from PIL import Image

from cellmorphnet import api
from cellmorphnet.inference.differential import differential, wilson
from cellmorphnet.runs import folders as runs
from cellmorphnet.vision import fields

BCCD_DIAMETER = 94.0  # the median red-cell diameter fields.rbc_diameter finds over BCCD's 364 fields (docs)


def _bccd(name: str) -> tuple[Image.Image, list[tuple[tuple[float, ...], bool]]]:
    """A BCCD field and its white-cell boxes (box, truncated) from its VOC annotation."""
    import defusedxml.ElementTree as ET

    with zipfile.ZipFile(BCCD_ZIP) as z:
        names = z.namelist()
        jpg = next(n for n in names if n.endswith(f"JPEGImages/BloodImage_{name}.jpg"))
        xml = next(n for n in names if n.endswith(f"Annotations/BloodImage_{name}.xml"))
        img = Image.open(io.BytesIO(z.read(jpg))).convert("RGB")
        root = ET.fromstring(z.read(xml))
    boxes = []
    for o in root.iter("object"):
        if o.findtext("name") == "WBC":
            b = o.find("bndbox")
            boxes.append((tuple(float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")),
                          o.findtext("truncated") == "1"))  # fmt: skip
    return img, boxes


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def shipped():
    return api.load_run(runs.PACKAGED, device="cpu")


def test_the_red_cells_give_the_scale_of_real_fields():
    found = [fields.rbc_diameter(_bccd(n)[0]) for n in ("00000", "00003", "00004", "00010", "00020", "00040")]
    assert all(d is not None for d in found)
    assert 75 < fields.set_diameter(found) < 115  # BCCD's red-cell boxes: median 106 x 102 pixels
    assert fields.rbc_diameter(Image.new("RGB", (640, 480), "white")) is None  # a blank image shows no red cells


@pytest.mark.parametrize("name, expected", [("00000", 1), ("00176", 2), ("00022", 1)])
def test_every_white_cell_of_a_real_field_is_found_where_bccd_boxed_it(name, expected):
    img, boxes = _bccd(name)
    cells = fields.find_white_cells(img, BCCD_DIAMETER)
    assert len(boxes) == len(cells) == expected
    for box, _ in boxes:
        assert max(_iou(box, c.box) for c in cells) >= 0.5, (box, cells)


def test_a_white_cell_cut_by_the_border_is_found_and_flagged_edge():
    img, boxes = _bccd("00001")
    assert any(truncated for _, truncated in boxes)
    cells = fields.find_white_cells(img, BCCD_DIAMETER)
    truncated = [box for box, t in boxes if t]
    hit = [c for c in cells if max(_iou(b, c.box) for b in truncated) >= 0.5]
    assert hit and all(c.edge for c in hit)


def _no_white_cell_field() -> Image.Image:
    """A real 640x480 field without a white cell: BCCD 00000's red cells left of its neutrophil, mirrored."""
    left = np.asarray(_bccd("00000")[0])[:, :250]
    return Image.fromarray(np.concatenate([left, left[:, ::-1], left[:, :140]], axis=1))


def _pbc_cell(cls: str, i: int = 0) -> Image.Image:
    return Image.open(sorted((PBC_TEST_IMAGES / cls).glob("*.jpg"))[i]).convert("RGB")


def _compose(background: Image.Image, cells: list[tuple[Image.Image, tuple[int, int], float]]) -> Image.Image:
    """Paste real PBC cells (a soft disc around the crop's centre) at known centres and scales onto a field."""
    field = background.copy()
    for crop, (cx, cy), scale in cells:
        side = round(crop.width * scale)
        crop = crop.resize((side, side), Image.BICUBIC)
        yy, xx = np.mgrid[:side, :side]
        r = np.hypot(xx - side / 2, yy - side / 2) / (side / 2)
        alpha = np.clip((0.72 - r) / 0.1, 0, 1)  # the cell and a little of its surroundings, faded out
        mask = Image.fromarray((alpha * 255).astype(np.uint8))
        field.paste(crop, (cx - side // 2, cy - side // 2), mask)
    return field


def test_cells_pasted_at_known_places_and_scales_are_found_and_classified(shipped, tmp_path):
    """Real PBC cells (neutrophil, lymphocyte, eosinophil, monocyte) pasted at 0.8x-1.1x onto a real field
    background: each is found near where it was put, and classified as it is as a crop."""
    picked = [("neutrophil", (150, 140), 0.8), ("lymphocyte", (470, 130), 1.0), ("eosinophil", (160, 360), 1.1),
              ("monocyte", (480, 350), 0.9)]  # fmt: skip
    composed = _compose(_no_white_cell_field(), [(_pbc_cell(c), at, s) for c, at, s in picked])
    composed.save(tmp_path / "composed.png")
    cells = fields.find_white_cells(composed, BCCD_DIAMETER)
    assert len(cells) == len(picked), cells
    for _, (cx, cy), _ in picked:
        nearest = min(cells, key=lambda c: np.hypot(c.centre[0] - cx, c.centre[1] - cy))
        assert np.hypot(nearest.centre[0] - cx, nearest.centre[1] - cy) < 0.5 * BCCD_DIAMETER
    preds = api.predict(shipped, [tmp_path / "composed.png"], cells="all")
    assert [p.predicted for p in preds] == [c for c, _, _ in picked]  # reading order: top row first


def test_a_field_without_white_cells_is_a_row_that_says_so(shipped, tmp_path):
    _no_white_cell_field().save(tmp_path / "empty.png")
    preds = api.predict(shipped, [tmp_path / "empty.png"])
    assert len(preds) == 1 and preds[0].no_cells and preds[0].status == "no cells" and preds[0].image.kind == "field"


def test_a_crop_is_still_one_cell_and_predicted_as_before(shipped):
    jpgs = [sorted((PBC_TEST_IMAGES / c).glob("*.jpg"))[0] for c in ("neutrophil", "lymphocyte", "platelet")]
    auto = api.predict(shipped, jpgs)
    one = api.predict(shipped, jpgs, cells="one")
    assert [p.image.kind for p in auto] == ["crop"] * 3 and all(p.cell is None for p in auto)
    assert [(p.predicted, p.confidence) for p in auto] == [(p.predicted, p.confidence) for p in one]


def test_a_huge_field_is_refused_from_its_header_with_one_line(cli, tmp_path):
    big = tmp_path / "slide.png"
    Image.new("RGB", (7200, 7200), (230, 220, 225)).save(big, optimize=False, compress_level=1)
    r = cli("infer", "bloodmnist", big, "--out", tmp_path / "x.csv")
    assert r.exit_code == 1 and "too large to search as a field (7200x7200" in r.stderr, r.output
    assert "Traceback" not in r.output


def test_infer_writes_a_row_per_cell_the_differential_and_overlays(cli, tmp_path):
    folder = tmp_path / "fields"
    folder.mkdir()
    for n in ("00000", "00176", "00001"):
        _bccd(n)[0].save(folder / f"{n}.jpg", quality=95)
    r = cli("infer", "bloodmnist", folder, "--out", tmp_path / "cells.csv", "--overlays", tmp_path / "drawn")
    assert r.exit_code == 0, r.output
    assert "Differential" in r.stdout and "3 fields: 3 white cells found" in r.stderr
    rows = list(csv.DictReader((tmp_path / "cells.csv").open()))
    assert [(r["path"].rsplit("/", 1)[-1], r["cell"]) for r in rows] == [
        ("00000.jpg", "1"), ("00001.jpg", "1"), ("00176.jpg", "1")]
    assert all(r["kind"] == "field" and r["status"] == "ok" and r["rbc_diameter_px"] for r in rows)
    edge = {r["path"].rsplit("/", 1)[-1]: r["edge"] for r in rows}
    assert edge["00001.jpg"] == "yes" and edge["00000.jpg"] == "no"
    for r in rows:
        x0, y0, x1, y1 = (int(r[k]) for k in ("x0", "y0", "x1", "y1"))
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480
    drawn = sorted(p.name for p in (tmp_path / "drawn").iterdir())
    assert drawn == ["00000_cells.png", "00001_cells.png", "00176_cells.png"]
    overlay = np.asarray(Image.open(tmp_path / "drawn" / "00000_cells.png").convert("RGB"))
    r0 = rows[0]
    assert tuple(overlay[int(r0["y0"]) + 30, int(r0["x0"]) + 1]) == (0, 170, 90)  # the box's left side, in green

    r = cli("infer", "bloodmnist", folder, "--out", tmp_path / "cells.json", "--count-edge-cells")
    summary = json.loads((tmp_path / "cells.json").read_text())["summary"]
    diff = summary["differential"]
    assert diff["edge_cells"] == 1 and diff["edge_cells_counted"] is True
    assert summary["fields"] == 3 and summary["cells"] == 3
    assert [i["kind"] for i in summary["per_image"]] == ["field"] * 3


class _P:  # the parts of a Prediction the differential reads
    def __init__(self, cls, conf=0.9, edge=None, error=None, no_cells=False, source="f.jpg", found=True):
        self.predicted, self.confidence, self.error, self.no_cells, self.source = cls, conf, error, no_cells, source
        self.cell_found = found
        self.cell = None if edge is None else type("C", (), {"edge": edge})()
        self.low_confidence = conf is not None and conf < 0.5


def test_the_differential_counts_white_cells_with_wilson_intervals():
    classes = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]
    preds = ([_P("neutrophil", edge=False)] * 6 + [_P("lymphocyte", edge=False)] * 3 + [_P("monocyte")]
             + [_P("neutrophil", edge=True)] * 2 + [_P("lymphocyte", conf=0.3)] + [_P("erythroblast")] * 2
             + [_P("platelet")] + [_P(None, error="broken")]
             + [_P(None, conf=None, no_cells=True, source="g")]
             + [_P("erythroblast", found=False)] * 3 + [_P("neutrophil", found=False)])  # blank images: never counted
    d = differential(preds, classes)
    by = {t["class"]: t for t in d["types"]}
    assert d["white_cells"] == 10  # 6 + 3 + 1: edge cells, the low-confidence one and non-white cells left out
    assert (by["neutrophil"]["count"], by["neutrophil"]["percent"]) == (6, 60.0)
    lo, hi = wilson(6, 10)
    assert by["neutrophil"]["ci95"] == [round(100 * lo, 1), round(100 * hi, 1)] == [31.3, 83.2]
    assert by["basophil"]["count"] == 0 and by["basophil"]["ci95"][0] == 0.0
    assert d["nucleated_red_cells"] == 2 and d["nrbc_per_100_wbc"] == 20.0
    assert d["other"] == {"platelet": 1} and d["low_confidence"] == 1 and d["edge_cells"] == 2
    assert d["fields_without_cells"] == 1 and d["no_cell_found"] == 4
    assert differential(preds, classes, include_edge=True)["white_cells"] == 12
    assert wilson(0, 0) == (0.0, 1.0)


def test_eval_on_a_labelled_folder_scores_the_central_cell_of_a_field(shipped, tmp_path):
    """A labelled field names the white cell nearest its centre; the other cells of the field are not scored."""
    from cellmorphnet.evaluation.on_folder import evaluate_folder
    from cellmorphnet.inference import inference_options

    for label, other in (("neutrophil", "lymphocyte"), ("lymphocyte", "neutrophil")):
        (tmp_path / label).mkdir()
        pasted = [(_pbc_cell(label), (330, 250), 1.0), (_pbc_cell(other), (110, 110), 0.9)]
        field = _compose(_no_white_cell_field(), pasted)
        field.save(tmp_path / label / "field.png")
        _pbc_cell(label, 1).save(tmp_path / label / "crop.png")
    report = evaluate_folder(shipped, tmp_path, inference_options(shipped.record))
    assert report["images"] == report["predicted"] == 4 and report["fields"] == 2
    assert report["metrics"]["accuracy"] == 1.0
