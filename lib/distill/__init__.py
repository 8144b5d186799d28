"""distill-study: knowledge distillation of causal LMs, as a thin library behind the notebooks."""
import logging
import warnings

__version__ = "0.1.0"

# Noise that would fill every report: tqdm's widget hint in headless kernels, and transformers'
# renaming notices for arguments we do not pass.
warnings.filterwarnings("ignore", message="IProgress not found")
warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
# bitsandbytes, on CPUs with AVX512-BF16, tries to fetch a faster 4-bit kernel from the hub at import
# and logs a warning when it cannot (always, offline); its built-in kernel is used either way.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
