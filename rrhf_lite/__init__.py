"""rrhf-lite: learn preference alignment (SFT, reward models, best-of-n, RRHF, PRO, DPO, PPO) by running it."""

import logging

__version__ = "0.1.0"

# On CPUs with AVX512-BF16, importing bitsandbytes (peft imports it) logs "Failed to load CPU gemm_4bit_forward from
# kernels-community ..." unless the optional `kernels` package can fetch that kernel from the hub. The kernel only
# serves 4-bit weights that bitsandbytes has repacked for inference, and rrhf_lite turns that repacking off (it breaks
# LoRA's gradients: rrhf_lite.models.disable_cpu_4bit_repacking), so the notice is about a path the package never
# takes. It is dropped here, before any module imports peft; every other bitsandbytes message passes.
BITSANDBYTES_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
UNUSED_KERNEL_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _not_the_unused_kernel_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(UNUSED_KERNEL_NOTICE)


_logger = logging.getLogger(BITSANDBYTES_CPU_LOGGER)
if not any(getattr(f, "__module__", None) == __name__ for f in _logger.filters):  # once, even if imported again
    _logger.addFilter(_not_the_unused_kernel_notice)
