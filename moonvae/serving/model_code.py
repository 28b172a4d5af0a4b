"""The file MLflow stores with each logged model and runs to rebuild it ("models from code").

Loading a model runs this file instead of unpickling a Python object: it names the
class, and `MoonVAEModel.load_context` reads the weights and latent tensors with
`torch.load(..., weights_only=True)`.
"""

from mlflow.models import set_model

from moonvae.serving.pyfunc import MoonVAEModel

set_model(MoonVAEModel())
