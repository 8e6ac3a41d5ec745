"""``api.predict`` throughput (images or fields per second, best of 3) on the 240 PBC test JPEGs and 72 BCCD fields,
for comparing two versions of the code in one session: run it alternately against each tree.

    PYTHONPATH=/path/to/other/checkout python -m benchmarks.studies.infer_same_run   # the other version
    python -m benchmarks.studies.infer_same_run                                      # this one

Used for issue 34 (bounded inputs): four alternating pairs against a17fa17 on 2026-12-06 (docs/serve.md).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from benchmarks._common import SHARED


def main() -> None:
    import cellmorphnet
    from cellmorphnet import api

    print(cellmorphnet.__file__, file=sys.stderr)
    rm = api.load_run("bloodmnist", device="cpu")
    pbc = sorted((SHARED / "bloodmnist-pbc" / "test_images").rglob("*.jpg"))
    tmp = Path(tempfile.mkdtemp())
    with zipfile.ZipFile(SHARED / "bccd" / "BCCD_Dataset-d272fb14cdff6e473fafeeeba32aba5f560e9e43.zip") as z:
        names = sorted(n for n in z.namelist() if "/JPEGImages/" in n and n.endswith(".jpg"))[:72]
        fields = []
        for n in names:
            (tmp / Path(n).name).write_bytes(z.read(n))
            fields.append(tmp / Path(n).name)
    out = {}
    for label, files in (("pbc_240", pbc), ("bccd_72_fields", fields)):
        api.predict(rm, files[:8])  # warm
        times = []
        for _ in range(3):
            t = time.perf_counter()
            api.predict(rm, files)
            times.append(time.perf_counter() - t)
        out[label] = round(len(files) / min(times), 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
