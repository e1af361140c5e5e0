"""bitsandbytes imported without asking the Hugging Face Hub for a kernel this package never runs.

On a CPU with AVX512-BF16, importing bitsandbytes (0.49 and 0.50; peft imports it) asks the ``kernels`` package for
``kernels-community/quantization-bitsandbytes``: a DNS lookup of huggingface.co and a request on every import, even
on the offline tiny profile. Under ``HF_HUB_OFFLINE=1`` there is no request, but ``kernels`` (0.19) and then
bitsandbytes each log a warning, which every lesson would show. That kernel multiplies by 4-bit weights that
bitsandbytes has repacked for CPU inference, and this package turns the repacking off (it breaks LoRA's gradients:
:func:`rrhf_lite.core.models.disable_cpu_4bit_repacking`), so the kernel would never run.

Neither library has a switch for it (read in bitsandbytes 0.50.2 and kernels 0.19.1): bitsandbytes reads no setting
before the request, and kernels' settings (``KERNELS_CACHE``, ``DISABLE_KERNEL_MAPPING``, which covers layers only,
``LOCAL_KERNELS`` and the hub's ``HF_HUB_OFFLINE``) still fail with a warning. So the narrowest point is bitsandbytes'
own import. Importing this module (``rrhf_lite.core.models`` does, before peft) runs that import with ``kernels``
unimportable for its length (``sys.modules["kernels"] = None``, the import system's documented way to make an import
fail): bitsandbytes takes the fallback it has for a machine without ``kernels`` installed (its own CPU code), and the
one record it logs about that ImportError is dropped; anything else it logs passes. ``kernels`` is importable again
afterwards (transformers uses it).
"""

from __future__ import annotations

import contextlib
import logging
import sys

# The logger of the module that asks for the kernel (bitsandbytes/backends/cpu/ops.py).
BITSANDBYTES_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"


def _not_about_kernels_missing(record: logging.LogRecord) -> bool:
    """A logging filter: False (drop) for a record that carries the ImportError of ``kernels``, as an argument of its
    message, which is how bitsandbytes reports it; True for every other record."""
    args = record.args if isinstance(record.args, tuple) else (record.args,)
    return not any(isinstance(arg, ImportError) and arg.name == "kernels" for arg in args)


@contextlib.contextmanager
def _kernels_unimportable():
    before = sys.modules.get("kernels")
    sys.modules["kernels"] = None
    try:
        yield
    finally:
        if before is None:
            del sys.modules["kernels"]
        else:
            sys.modules["kernels"] = before


def import_bitsandbytes():
    """Import bitsandbytes (once per process) without its import-time request for a hub kernel; returns the module."""
    if "bitsandbytes" in sys.modules:
        return sys.modules["bitsandbytes"]
    logger = logging.getLogger(BITSANDBYTES_CPU_LOGGER)
    logger.addFilter(_not_about_kernels_missing)
    try:
        with _kernels_unimportable():
            import bitsandbytes
    finally:
        logger.removeFilter(_not_about_kernels_missing)
    return bitsandbytes


import_bitsandbytes()
