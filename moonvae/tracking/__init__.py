"""The MLflow side of a run: runs and their lineage, batched metrics, images, tags, the model registry."""
