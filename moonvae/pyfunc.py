"""Where models logged by moonvae 0.1 find their class: their `model_code.py` imports `moonvae.pyfunc`.

The model itself lives in `moonvae.serving.pyfunc`; this name stays so those models load.
"""

from moonvae.serving.pyfunc import MoonVAEModel

__all__ = ["MoonVAEModel"]
