"""Where samples come from and how good they are: latent densities, sampling sources, the judgement of samples."""
