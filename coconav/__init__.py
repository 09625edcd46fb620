"""coconav: COCONUT continuous-thought reasoning for Hugging Face causal LMs, with a PPO navigator.

    from coconav import CoconavModel
    model = CoconavModel.from_pretrained("runs/demo/coconut")
    print(model.generate("3 + 4 * 2 ?"))

Command line: `coconav demo | train | eval | generate` (see `coconav --help`).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import coconav` stays light; torch and transformers load on first use.
    if name == "CoconavModel":
        from coconav.inference import CoconavModel

        return CoconavModel
    if name == "LatentLM":
        from coconav.model.latent_lm import LatentLM

        return LatentLM
    raise AttributeError(f"module 'coconav' has no attribute {name!r}")


__all__ = ["CoconavModel", "LatentLM", "__version__"]
