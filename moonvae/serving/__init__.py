"""The trained model as an MLflow pyfunc model: what it holds, how it is loaded and served."""
