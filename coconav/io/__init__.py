"""Checkpoints on disk and on the Hub: safetensors weights with their metadata, resumable trainer state,
model cards, the upload list of `coconav push`, and checkpoints by Hub id. Above ``model`` (a checkpoint
loads a latent LM), below ``decode``."""
