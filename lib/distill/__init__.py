"""distill-study: knowledge distillation of causal LMs, as a thin library behind the notebooks."""
import warnings

__version__ = "0.1.0"

# Noise that would fill every report: tqdm's widget hint in headless kernels, and transformers'
# renaming notices for arguments we do not pass.
warnings.filterwarnings("ignore", message="IProgress not found")
warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
