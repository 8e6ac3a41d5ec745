"""The shape of the package, for reviewing the house rules of issue 35: the largest module, the longest positional
signature outside ``cli/``, how many modules sit loose in ``cellmorphnet/``, and the layers of the architecture test.

    python scripts/code_shape.py        # targets: no module over 400 lines, no function outside cli/ with more
                                        # than 6 positional parameters
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "cellmorphnet"


def main() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_architecture import LAYERS, module_sizes, positional_parameters  # the test holds the same rules

    sizes = sorted(((n, p.relative_to(ROOT).as_posix()) for p, n in module_sizes().items()), reverse=True)
    signatures = sorted(((n, name) for name, n in positional_parameters().items()), reverse=True)
    loose = sorted(p.name for p in PKG.glob("*.py"))
    print(f"largest modules: {', '.join(f'{n} ({lines})' for lines, n in sizes[:5])}")
    print(f"over 400 lines: {sum(lines > 400 for lines, _ in sizes)}")
    print(f"longest positional signatures outside cli/: {', '.join(f'{n} ({k})' for k, n in signatures[:5])}")
    print(f"functions outside cli/ with more than 6 positional parameters: {sum(k > 6 for k, _ in signatures)}")
    print(f"modules loose in cellmorphnet/: {len(loose)} ({', '.join(loose)})")
    print(f"layers in tests/test_architecture.py: {len(LAYERS)}")


if __name__ == "__main__":
    main()
