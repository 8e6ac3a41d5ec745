"""export: ONNX parity with PyTorch on real images, and the CoreML package's spec."""

import json
import platform
import shutil

import onnx
import pytest
from conftest import assert_one_line_error, in_home, train_once

QUICK = ["--model", "test_efficientnet", "--no-pretrained", "--batch-size", "16", "--accum-steps", "1",
         "--limit-batches", "2", "--data-size", "28"]  # fmt: skip


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory):
    return train_once(tmp_path_factory, "x", "--epochs", "1", *QUICK)[0]


@pytest.fixture
def trained(trained_home, home):
    return in_home(trained_home, home, "x")


def test_onnx_export_matches_pytorch(cli, trained, tmp_path):
    out = tmp_path / "model.onnx"
    r = cli("export", "x", "--format", "onnx", "--out", out, "--benchmark", "--json")
    assert r.exit_code == 0, r
    result = json.loads(r.stdout)
    check = result["verification"]
    assert check["images"] == 64 and check["top1_agreement"] == 1.0 and check["max_abs_diff"] < 1e-4
    b = result["benchmark"]
    assert b["pytorch_latency_ms"] > 0 and b["onnxruntime_images_per_s"] > 0
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["classes"].split(",")[0] == "basophil" and meta["input_size"] == "28"
    assert json.loads(meta["stain_reference"].split(" (")[0])["nucleus_density"]  # for apps that normalise sets
    assert [i.name for i in model.graph.input] == ["image"]
    human = cli("export", "x", "--format", "onnx", "--out", tmp_path)  # a folder: the run's name in it
    assert "top-1 agreement 100.0%" in " ".join(human.stderr.split()) and (tmp_path / "x.onnx").is_file()


def test_export_option_errors(cli, trained, tmp_path):
    assert_one_line_error(cli("export", "x", "--format", "tflite"), "--format must be onnx or coreml")
    assert_one_line_error(cli("export", "x", "--format", "onnx", "--quantize", "int8"), "CoreML only")
    (tmp_path / "a-file").write_text("")
    assert_one_line_error(cli("export", "x", "--out", tmp_path / "a-file" / "m.onnx"), "a-file is not a folder")
    assert_one_line_error(cli("export", "x", "--format", "coreml", "--out", tmp_path / "a-file"), "not a folder")


@pytest.mark.slow  # 6-9 s: keeps the fast tier under its 3 minutes
def test_coreml_package_spec(cli, trained, tmp_path):
    r = cli("export", "x", "--format", "coreml", "--all", "--out", tmp_path / "cm", "--json")
    assert r.exit_code == 0, r
    # none of coremltools' own chatter: untested-version and macOS-binding notices, a progress bar per pass, and
    # torch's jit.trace deprecation
    for chatter in ("Failed to load", "has not been tested", "Running MIL", "Converting PyTorch", "Warning"):
        assert chatter not in r.stderr, (chatter, r.stderr)
    result = json.loads(r.stdout)
    assert [v["variant"] for v in result["variants"]] == ["fp32", "fp16", "int8"]
    for v in result["variants"]:
        spec = v["spec"]
        assert spec["type"] == "mlProgram"
        assert spec["inputs"][0]["type"] == "imageType" and spec["inputs"][0]["width"] == 28
        assert spec["predicted_feature"] == "classLabel"
        assert spec["class_labels"][:2] == ["basophil", "eosinophil"] and len(spec["class_labels"]) == 8
        assert spec["metadata"]["input_size"] == "28" and "centre crop" in spec["metadata"]["preprocessing"]
    sizes = {v["variant"]: v["spec"]["size_bytes"] for v in result["variants"]}
    assert sizes["int8"] < sizes["fp32"]
    if platform.system() != "Darwin":
        assert "need macOS" in result["note"]
        assert all(v["benchmark"] is None for v in result["variants"])
    else:  # pragma: no cover - runs on macOS only
        assert all(v["benchmark"]["top1_agreement"] > 0.9 for v in result["variants"])


@pytest.mark.parametrize("arch, size", [("tf_efficientnet_lite0", 57), ("tf_efficientnet_lite0", 64),
                                        ("efficientnet_lite0", 64)])  # fmt: skip
def test_static_padding_copy_computes_what_the_model_computes(arch, size):
    import timm
    import torch

    from cellmorphnet.export import SAME_PAD_TYPES, static_padding

    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=8).eval()
    static = static_padding(model, size)
    assert not any(type(m).__name__ in SAME_PAD_TYPES for m in static.modules())
    x = torch.rand(4, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(static(x), model(x), atol=1e-5)
    # the original keeps its dynamic padding (training and infer still take any size)
    assert any(type(m).__name__ in SAME_PAD_TYPES for m in model.modules()) == arch.startswith("tf_")


@pytest.mark.slow
def test_default_architecture_exports_from_a_copied_run_folder_alone(cli, home, tmp_path):
    """The default model (tf_efficientnet_lite0, TF 'same' padding) to CoreML fp32/fp16/int8 and ONNX, from a run
    folder copied away from its dataset cache (as to a Mac)."""
    r = cli("train", "--datasets", "sample", "--name", "lite0", "--epochs", "1", "--batch-size", "16",
            "--accum-steps", "1", "--limit-batches", "1", "--data-size", "28")  # fmt: skip
    assert r.exit_code == 0, r
    copied = tmp_path / "elsewhere" / "lite0"
    shutil.copytree(home / "runs" / "lite0", copied)
    shutil.rmtree(home)  # no cache, no prepared data, no runs: only the copied folder
    r = cli("export", copied, "--format", "coreml", "--all", "--out", tmp_path / "cm", "--json")
    assert r.exit_code == 0, r
    variants = json.loads(r.stdout)["variants"]
    assert [v["variant"] for v in variants] == ["fp32", "fp16", "int8"]
    for v in variants:
        assert v["spec"]["type"] == "mlProgram" and v["spec"]["inputs"][0]["width"] == 28
        assert v["spec"]["class_labels"] == ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte",
                                             "monocyte", "neutrophil", "platelet"]  # fmt: skip
        assert v["spec"]["metadata"]["intended_use"].startswith("research use only")
    sizes = {v["variant"]: v["spec"]["size_bytes"] for v in variants}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]
    r = cli("export", copied, "--format", "onnx", "--out", tmp_path / "m.onnx", "--json")
    assert r.exit_code == 0, r
    check = json.loads(r.stdout)["verification"]
    assert check["images"] == 64 and check["top1_agreement"] == 1.0 and check["max_abs_diff"] < 1e-4
