"""Models: the latent LM (continuous thoughts over any Hugging Face causal LM), its replayable KV cache,
builders and weight sources, the navigator policy and its thought memory."""
