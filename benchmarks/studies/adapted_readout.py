"""Does reading an adapted model differently lift it at k = 10 reviewed cells per type?

    python -m benchmarks.studies.adapted_readout --json       # results/adapted-readout-DATE.json

The k = 10 draws of ``benchmarks/adapt.py`` (the same seeded picks of ``external/zheng2018-d1``), each adapted
with every default of ``train --init`` (replaying the parent's PBC training data), and the rest scored with
every default of ``infer`` as the benchmark scores it, by:

- the adapted model itself;
- weight-space ensembles with the parent (WiSE-FT, Wortsman et al. 2022): ``alpha`` x the adapted weights +
  (1 - ``alpha``) x the parent's;
- a prototype head: the cosine similarity of a cell's pooled features to the mean features of each type's
  reviewed cells (8 flips and turns each), times ``--scale``, blended with the head's logits at weight ``beta``.

Plain balanced accuracy (argmax over every class) over the types with at least 5 cells left.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks._common import emit, header
from benchmarks.adapt import draw_picks, external_files, link_folder, prepare_parent_data
from benchmarks.studies.self_training import balanced_accuracy


def _prototype_model(rm, picked: dict[str, list[Path]], options, beta: float, scale: float):
    import torch

    from cellmorphnet.data.loader import eval_transform
    from cellmorphnet.inference import predict_files
    from cellmorphnet.model.prediction import ORIENTATIONS, oriented

    net = rm.model
    normalize = torch.nn.functional.normalize

    def pooled(x):
        return net.forward_head(net.forward_features(x), pre_logits=True)

    files = [f for fs in picked.values() for f in fs]
    _, inputs = predict_files(rm, files, options, keep_inputs=True)
    x = eval_transform(torch.from_numpy(np.stack([inputs[f] for f in files])), options.policy.image_size,
                       options.policy.mean, options.policy.std)  # fmt: skip
    with torch.no_grad():
        feats = torch.stack([normalize(pooled(v), dim=1) for v in oriented(x, ORIENTATIONS)]).mean(0)
    centroids = torch.zeros(len(rm.classes), feats.shape[1])  # a type nobody reviewed: similarity 0
    for i, c in enumerate(rm.classes):
        rows = [j for j, f in enumerate(files) if f in picked.get(c, [])]
        if rows:
            centroids[i] = normalize(feats[rows].mean(0), dim=0)

    class Prototypes(torch.nn.Module):
        def forward(self, x):
            f = pooled(x)
            return (1 - beta) * net.get_classifier()(f) + beta * scale * normalize(f, dim=1) @ centroids.T

    return Prototypes().eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=6)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--alphas", default="0.8,0.6")
    ap.add_argument("--betas", default="0.3,0.5")
    ap.add_argument("--scale", type=float, default=10.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from cellmorphnet import api
    from cellmorphnet.inference import inference_options, predict_files
    from cellmorphnet.runs import folders as runs
    from cellmorphnet.training.finetune import adapt

    result = header("python -m benchmarks.studies.adapted_readout " + " ".join(sys.argv[1:]))
    result["rows"] = []
    files = external_files()
    parent = api.load_run(runs.PACKAGED, device="cpu")
    parent_state = parent.model.state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        prepare_parent_data(home)
        parent_dir = runs.packaged_runs()[runs.PACKAGED]
        for draw in range(args.draws):
            seed = 1000 * args.k + draw
            picked = {c: fs for c, fs in draw_picks(files, args.k, seed).items() if fs}
            rest = [f for c, fs in files.items() for f in fs if f not in picked.get(c, [])]
            truth = {f: c for c, fs in files.items() for f in fs}
            work = Path(tmp) / f"draw{draw}"
            adapt(parent_dir, link_folder(work / "lab", picked), work / "run", home=home, device="cpu")
            rm = api.load_run(str(work / "run"), device="cpu")
            options = inference_options(rm.record)
            adapted = copy.deepcopy(rm.model.state_dict())
            row = {"draw": draw, "seed": seed}

            def score(model, rm=rm, options=options, rest=rest, truth=truth):
                preds, _ = predict_files(dataclasses.replace(rm, model=model), rest, options)
                return round(balanced_accuracy(preds, truth)[0], 4)

            row["default"] = score(rm.model)
            for alpha in (float(a) for a in args.alphas.split(",")):
                rm.model.load_state_dict({k: (alpha * v.float() + (1 - alpha) * parent_state[k].float()).to(v.dtype)
                                          if v.is_floating_point() else v for k, v in adapted.items()})  # fmt: skip
                row[f"wise_{alpha}"] = score(rm.model)
            rm.model.load_state_dict(adapted)
            for beta in (float(b) for b in args.betas.split(",")):
                row[f"prototype_{beta}"] = score(_prototype_model(rm, picked, options, beta, args.scale))
            result["rows"].append(row)
            print(row, file=sys.stderr, flush=True)
    keys = [k for k in result["rows"][0] if k not in ("draw", "seed")] if result["rows"] else []
    result["means"] = {k: round(float(np.mean([r[k] for r in result["rows"]])), 4) for k in keys}
    print(result["means"], file=sys.stderr)
    emit(result, args.json)


if __name__ == "__main__":
    main()
