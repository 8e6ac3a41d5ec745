"""The dataset registry, kept as data.

BloodMNIST's URLs, file names, MD5s, labels and split counts are read from the ``medmnist``
package's ``INFO`` (never copied here). BCCD and LISC have no such package, so their pins live in
this table. ``sample`` ships inside cellmorphnet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from cellmorphnet.errors import DatasetNotFound

MEDMNIST_SIZES = (28, 64, 128, 224)

# Short class names for BloodMNIST, in MedMNIST's label order. INFO's long names
# ("immature granulocytes(myelocytes, ...)") are kept in the manifest as descriptions.
BLOODMNIST_SHORT_NAMES = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)


@dataclass(frozen=True)
class DatasetInfo:
    """One row of the registry."""

    name: str  # the name used on the command line
    title: str  # a human title
    classes: tuple[str, ...]  # class names, in label order
    licence: str  # licence of the data
    homepage: str  # where a person can read about it and download it by hand
    citation: str  # who to cite
    default_size: int  # the size ``prepare`` uses when none is given
    quick_recipe: dict[str, Any] = field(
        default_factory=dict
    )  # training settings used when this dataset is trained alone
    extra: dict[str, Any] = field(default_factory=dict)  # source-specific pins


@lru_cache(maxsize=1)
def medmnist_info() -> dict[str, Any]:
    """BloodMNIST's entry of ``medmnist.INFO``.

    ``import medmnist`` runs its ``__init__``, which imports torch and its dataset classes (about 3 s).
    ``medmnist/info.py`` itself needs only the standard library, so it is loaded on its own.
    """
    import importlib.util

    spec = importlib.util.find_spec("medmnist")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFound("The medmnist package is not installed.", hint="pip install medmnist")
    info_path = Path(next(iter(spec.submodule_search_locations))) / "info.py"
    info_spec = importlib.util.spec_from_file_location("_cellmorphnet_medmnist_info", info_path)
    module = importlib.util.module_from_spec(info_spec)
    info_spec.loader.exec_module(module)
    return module.INFO["bloodmnist"]


def bloodmnist_file(size: int) -> tuple[str, str, str]:
    """Return ``(url, file name, md5)`` of BloodMNIST at ``size``, from ``medmnist.INFO``."""
    if size not in MEDMNIST_SIZES:
        raise DatasetNotFound(
            f"BloodMNIST has no size {size}.", hint=f"Use one of {', '.join(map(str, MEDMNIST_SIZES))}."
        )
    info = medmnist_info()
    suffix = "" if size == 28 else f"_{size}"
    url = info[f"url{suffix}"]
    md5 = info[f"MD5{suffix}"]
    filename = url.split("/")[-1].split("?")[0]
    return url, filename, md5


BCCD_COMMIT = "d272fb14cdff6e473fafeeeba32aba5f560e9e43"

REGISTRY: dict[str, DatasetInfo] = {
    "bloodmnist": DatasetInfo(
        name="bloodmnist",
        title="BloodMNIST (MedMNIST v2 / MedMNIST+)",
        classes=BLOODMNIST_SHORT_NAMES,
        licence="CC BY 4.0",
        homepage="https://medmnist.com/",
        citation="Yang et al., MedMNIST v2, Scientific Data 10, 41 (2023); Acevedo et al., Data in Brief 30 (2020)",
        default_size=28,
    ),
    "bccd": DatasetInfo(
        name="bccd",
        title="BCCD (Blood Cell Count and Detection), cell crops",
        classes=("RBC", "WBC", "Platelets"),
        licence="MIT",
        homepage="https://github.com/Shenggan/BCCD_Dataset",
        citation="Shenggan, BCCD_Dataset (GitHub)",
        default_size=64,
        extra={
            "url": f"https://github.com/Shenggan/BCCD_Dataset/archive/{BCCD_COMMIT}.zip",
            "filename": f"BCCD_Dataset-{BCCD_COMMIT}.zip",
            "commit": BCCD_COMMIT,
            # sha256 over the sorted "path sha256" lines of every file under BCCD/ (see _io.tree_digest).
            "content_digest": "5322e21f327b1e15a8208411822d01f522b5267cb82fca3907188b3c765a4560",
            "n_images": 364,
            "n_annotations": 364,
        },
    ),
    "lisc": DatasetInfo(
        name="lisc",
        title="LISC (Leukocyte Images for Segmentation and Classification), leukocyte crops",
        classes=("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"),
        licence="research use; see the LISC homepage",
        homepage="http://users.cecs.anu.edu.au/~hrezatofighi/Data/Leukocyte%20Data.htm",
        citation="Rezatofighi & Soltanian-Zadeh, Comput. Med. Imaging Graph. 35 (2011)",
        default_size=64,
        extra={
            "url": "http://users.cecs.anu.edu.au/~hrezatofighi/Data/LISC%20Database.zip",
            "filename": "LISC Database.zip",
            # folder name in the archive -> class name; "mixt" is excluded unless asked for.
            "class_dirs": {
                "Baso": "basophil",
                "eosi": "eosinophil",
                "lymp": "lymphocyte",
                "mono": "monocyte",
                "neut": "neutrophil",
                "mixt": "mixt",
            },
        },
    ),
    "sample": DatasetInfo(
        name="sample",
        title="Embedded BloodMNIST-format sample (800 real PBC cells, stored at 28 px)",
        classes=BLOODMNIST_SHORT_NAMES,
        licence="CC BY 4.0",
        homepage="https://data.mendeley.com/datasets/snkd93bnjr/1",
        citation="Acevedo et al., Data in Brief 30 (2020); Yang et al., MedMNIST v2 (2023)",
        # Prepared at 64 px by default: EfficientNet's stride-32 stem leaves 28 px inputs a 1x1 feature
        # map, and upscaled 64 px trains far better (see docs/benchmarks.md).
        default_size=64,
        # 512 training images give 8 optimizer steps an epoch: the full-dataset defaults (lr 1e-4,
        # 50 epochs) would take minutes to reach what this reaches in about one (docs/benchmarks.md).
        quick_recipe={"epochs": 15, "lr": 1e-3, "unfreeze_epochs": [1, 3], "patience": 5},
    ),
}

FOLDER_PREFIX = "folder:"


def get_info(name: str) -> DatasetInfo:
    """Look a dataset up by name, or raise with the list of known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise DatasetNotFound(
            f"Unknown dataset '{name}'.",
            hint=f"Known datasets: {', '.join(REGISTRY)}, or folder:PATH for your own class folders.",
        ) from None
