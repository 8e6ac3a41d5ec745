"""One shared class list over several datasets.

Where datasets name the same cell type it is one class: platelet (BloodMNIST, BCCD), and the white
cells basophil, eosinophil, lymphocyte, monocyte and neutrophil (BloodMNIST, LISC). RBC is its own
class. BCCD's ``WBC`` is a coarse label: it stands for every white-cell class in the shared list, and
its loss is computed on their summed probability. When no dataset brings fine white-cell classes
(BCCD alone), ``wbc`` is an ordinary class.

Each dataset's local label ``j`` maps to a *target*: the set of shared classes it covers (one
class for a fine label, several for a coarse one).
"""

from __future__ import annotations

from dataclasses import dataclass

WHITE_CELLS = ("basophil", "eosinophil", "ig", "lymphocyte", "monocyte", "neutrophil")

# local class name (lower case) -> shared class name
ALIASES = {
    "platelets": "platelet",
    "plt": "platelet",
    "thrombocyte": "platelet",
    "red blood cell": "rbc",
    "erythrocyte": "rbc",
    "white blood cell": "wbc",
    "leukocyte": "wbc",
    "immature granulocytes": "ig",
    "baso": "basophil",
    "eosi": "eosinophil",
    "lymp": "lymphocyte",
    "mono": "monocyte",
    "neut": "neutrophil",
    # plurals, as people name their folders
    "basophils": "basophil",
    "eosinophils": "eosinophil",
    "erythroblasts": "erythroblast",
    "lymphocytes": "lymphocyte",
    "monocytes": "monocyte",
    "neutrophils": "neutrophil",
    "nrbc": "erythroblast",
    "nucleated red cells": "erythroblast",
}
COARSE = {"wbc": WHITE_CELLS}


def canonical(name: str) -> str:
    key = name.strip().lower()
    return ALIASES.get(key, key)


@dataclass(frozen=True)
class Taxonomy:
    """The shared classes and, per dataset, the shared classes that each local label covers."""

    classes: tuple[str, ...]  # the shared class list; the model's outputs
    local_classes: dict[str, tuple[str, ...]]  # dataset -> its own class names, in label order
    targets: dict[str, tuple[tuple[int, ...], ...]]  # dataset -> per local label, shared class indices

    @classmethod
    def build(cls, datasets: dict[str, list[str]]) -> Taxonomy:
        """Build from ``{dataset: [local class names]}``, keeping first-seen order of shared classes."""
        present = {canonical(n) for names in datasets.values() for n in names}
        shared: list[str] = []
        for names in datasets.values():
            for n in names:
                c = canonical(n)
                # A coarse name with no finer class present is an ordinary class.
                ordinary = c not in COARSE or not any(w in present for w in COARSE[c])
                if ordinary and c not in shared:
                    shared.append(c)
        index = {c: i for i, c in enumerate(shared)}
        targets = {}
        for ds, names in datasets.items():
            rows = []
            for n in names:
                c = canonical(n)
                if c in index:
                    rows.append((index[c],))
                else:  # a coarse label over the fine classes present
                    rows.append(tuple(index[w] for w in COARSE[c] if w in index))
            targets[ds] = tuple(rows)
        return cls(tuple(shared), {d: tuple(n) for d, n in datasets.items()}, targets)

    def target_matrix(self, dataset: str):
        """A (local labels x shared classes) 0/1 float tensor: which shared classes each local label covers."""
        import torch

        rows = self.targets[dataset]
        m = torch.zeros(len(rows), len(self.classes))
        for j, idx in enumerate(rows):
            m[j, list(idx)] = 1.0
        return m

    def is_coarse(self, dataset: str) -> bool:
        return any(len(t) > 1 for t in self.targets[dataset])

    def to_dict(self) -> dict:
        return {
            "classes": list(self.classes),
            "local_classes": {d: list(v) for d, v in self.local_classes.items()},
            "targets": {d: [list(t) for t in v] for d, v in self.targets.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> Taxonomy:
        return cls(
            tuple(d["classes"]),
            {k: tuple(v) for k, v in d["local_classes"].items()},
            {k: tuple(tuple(t) for t in v) for k, v in d["targets"].items()},
        )
