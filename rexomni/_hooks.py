"""Register rexomni with transformers without importing transformers at ``import rexomni``.

``transformers.pipeline("rex-omni", ...)`` and ``AutoProcessor.from_pretrained(folder)`` need our
pipeline and processor classes registered, but registering imports torch and transformers'
pipelines (seconds). So ``import rexomni`` installs a finder that waits for the transformers
module concerned to be imported, and registers right after it has executed. If that module is
already imported, registration happens at once.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# module whose import triggers the registration -> module of ours that registers when imported
TRIGGERS = {
    "transformers.pipelines": "rexomni.pipeline",
    "transformers.models.auto.processing_auto": "rexomni.processing",
}


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of a trigger module to register afterwards."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in TRIGGERS:
            return None
        # Ask the other finders for the real spec (we are skipped while they look).
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader_exec = spec.loader.exec_module
        ours = TRIGGERS[fullname]

        def exec_module(module):
            loader_exec(module)
            _register(ours)

        spec.loader.exec_module = exec_module
        return spec


def _register(module_name: str) -> None:
    importlib.import_module(module_name)  # registers as a side effect of its import


def install() -> None:
    """Register now where transformers is already loaded, else when it is."""
    pending = False
    for trigger, ours in TRIGGERS.items():
        if trigger in sys.modules:
            _register(ours)
        else:
            pending = True
    if pending and not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
