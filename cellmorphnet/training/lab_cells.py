"""A lab's labelled cells (class folders, such as ``reviews export`` writes) read as the parent's infer reads them,
with their folders matched to the parent's classes by name: what fine-tuning trains on."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellmorphnet.errors import InvalidData


@dataclass
class LabCells:
    """The lab's labelled cells as the parent's infer prepares them."""

    arrays: np.ndarray  # N x H x W x 3 uint8
    labels: np.ndarray  # indices into ``classes``
    classes: list[str]  # the adapted model's classes: the parent's, then the lab's new ones
    new_classes: list[str]
    files: list[str]
    skipped: list[tuple[str, str]]  # (file, why)
    folder_classes: dict[str, str]  # folder name -> class
    lab_set: dict[str, Any]  # the set-level values these cells were prepared with (inference.prepare), for infer


def match_folders(folder: Path, folder_names: list[str], counts: dict[str, int], parent: list[str],
                  new_classes: tuple[str, ...] = ()) -> tuple[dict[str, str], list[str]]:  # fmt: skip
    """Each class folder's class (the parent's, by ``canonical`` name) and the lab's new classes.

    A folder that names none of the parent's classes is a new class only where ``new_classes`` says it is meant;
    otherwise it is a misspelling until told so (``neutrofil/`` would teach the model a ninth class of
    neutrophils), refused with the nearest class named. An empty class folder is refused too: a class with no
    cells cannot be learned, and would be a class the model never saw."""
    import difflib

    from cellmorphnet.data.taxonomy import canonical
    from cellmorphnet.reviews.store import check_class_name

    meant = {check_class_name(c) for c in new_classes}
    mapping, new = {}, []
    for name in folder_names:
        if not counts.get(name):
            raise InvalidData(f"{folder / name} holds no images.", hint="Remove the empty class folder, or add its "
                              "reviewed cells.")  # fmt: skip
        c = canonical(name)
        if c in parent:
            mapping[name] = c
        elif name in meant:
            mapping[name] = name
            new.append(name)
        else:
            near = difflib.get_close_matches(c, parent, n=1, cutoff=0.5)
            guess = f" Did you mean '{near[0]}'?" if near else ""
            raise InvalidData(f"{folder / name}: '{name}' is not one of the model's classes ({', '.join(parent)})."
                              f"{guess}", hint=f"Rename the folder, or, if it is a class of your lab's own, say so: "
                              f"--new-class {name}")  # fmt: skip
    unused = sorted(meant - set(new))
    if unused:
        raise InvalidData(f"--new-class {', '.join(unused)}: no class folder of that name in {folder}.")
    return mapping, list(dict.fromkeys(new))


def lab_cells(rm, folder: Path, workers: int = 2, new_classes: tuple[str, ...] = (), *,
              exclude: frozenset[Path] = frozenset()) -> LabCells:  # fmt: skip
    """Read ``folder``'s class sub-folders through the parent's inference pipeline, labels matched by name
    (``match_folders``); the files in ``exclude`` (set aside to calibrate on) are left out."""
    from cellmorphnet.data.sources.folder import list_images
    from cellmorphnet.inference import inference_options, prepare_set
    from cellmorphnet.inference.lab import measure_lab
    from cellmorphnet.inference.predict import one_view_probs

    folder_names, items = list_images(folder)
    items = [(p, i) for p, i in items if p not in exclude]
    parent = list(rm.record.classes)
    counts = Counter(folder_names[i] for _, i in items)
    mapping, new = match_folders(folder, folder_names, counts, parent, new_classes)
    classes = parent + new
    if not items:
        raise InvalidData(f"{folder} has no images in its class sub-folders.")
    # this lab's own values, measured on its cells as one set with the parent's home preprocessing (an adapted
    # parent's are another lab's): the adapted run keeps them and reads the lab's images with them
    files = [p for p, _ in items]
    values, _ = measure_lab(rm, files, workers=workers, minimum=1)
    options = dataclasses.replace(inference_options(rm.record, lab=values), cells="one", tta=False,
                                  scale_views=False)  # fmt: skip
    one_view = one_view_probs(rm, options.policy, temperature=options.temperature)
    label_of = {p: classes.index(mapping[folder_names[i]]) for p, i in items}
    _, loaded = prepare_set(files, options, parent, one_view, workers=workers)
    arrays, labels, kept, skipped = [], [], [], []
    for x in loaded:
        if x.error is not None:
            skipped.append((str(x.item), x.error))
            continue
        arrays.append(x.array)
        labels.append(label_of[x.item])
        kept.append(str(x.item))
    if not arrays:
        raise InvalidData(f"None of the images in {folder} could be read.")
    lab_set = {"side": values.side, "stain": values.stain, "contrast": values.contrast, "cells": len(arrays)}
    return LabCells(np.stack(arrays), np.array(labels), classes, new, kept, skipped, mapping,
                    lab_set)  # fmt: skip
