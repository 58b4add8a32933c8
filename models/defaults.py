"""Default model ids (kept light: importing this pulls in no torch/diffusers/transformers)."""

DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"
DEFAULT_T5 = "DeepFloyd/t5-v1_1-xxl"
