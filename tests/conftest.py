"""Shared fixtures: tiny config overrides, one tiny COCONUT run trained once per session, a CLI runner, real data.

Nothing is downloaded (HF_HUB_OFFLINE=1). Real data sets (GSM8K, GSM8k-Aug, ProsQA) come from the folder
named by COCONAV_TEST_DATA, laid out as gsm8k/{train,test}.jsonl, gsm8k_aug/{valid,test}.txt and
prosqa/{valid,test}.json; tests that need it skip, with the reason, only when the variable is unset
(`.ci/run` sets it, so nothing is skipped there). torch runs on one thread: on a loaded 2-core machine
the default two threads make these tiny models ~50x slower (thread contention, not compute).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import re  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
DEMO_PRESET = REPO / "coconav" / "recipes" / "demo.yaml"
TEST_DATA_VARIABLE = "COCONAV_TEST_DATA"


def real_data_path(relative: str) -> Path:
    """`$COCONAV_TEST_DATA/relative`: skips when the variable is unset, fails when the file is missing."""
    folder = os.environ.get(TEST_DATA_VARIABLE)
    if not folder:
        pytest.skip(f"{TEST_DATA_VARIABLE} is not set (a folder laid out like the project's shared data: "
                    "gsm8k/, gsm8k_aug/, prosqa/)")
    path = Path(folder) / relative
    assert path.is_file(), f"{TEST_DATA_VARIABLE}={folder} has no {relative}"
    return path


@pytest.fixture
def real_data():
    """The real-data lookup as a fixture: real_data("gsm8k/test.jsonl") -> Path (see real_data_path)."""
    return real_data_path

TINY_OVERRIDES = [
    "threads=1",
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.intermediate_size=32",
    "data.train_size=64",
    "data.validation_size=8",
    "data.test_size=8",
    "train.batch_size=8",
    "train.first_stage_steps=2",
    "train.steps_per_stage=1",
    "train.warmup_steps=1",
    "eval.max_new_tokens=8",
    "log.progress=false",
]

# A tqdm bar line (transformers prints "Loading weights: 100%|####| 11/11 [...]" on stderr).
_PROGRESS_RE = re.compile(r"^[^:\n]*:\s*\d+%\|.*\|")


@dataclass
class CliResult:
    """What one `coconav` call did: exit code, stdout, stderr."""

    rc: int
    out: str
    err: str

    def stderr_lines(self, drop_progress: bool = True) -> list[str]:
        """Non-blank stderr lines; tqdm redraws ('\\r') are split, progress-bar lines dropped when asked."""
        lines = [line for line in re.split(r"[\r\n]+", self.err) if line.strip()]
        if drop_progress:
            lines = [line for line in lines if not _PROGRESS_RE.match(line)]
        return lines

    def error(self, drop_progress: bool = True) -> str:
        """The message of a user error: exit code 2, no traceback, exactly one `coconav: error:` line."""
        assert "Traceback" not in self.err, self.err
        assert self.rc == 2, f"exit code {self.rc}, stderr: {self.err!r}"
        lines = self.stderr_lines(drop_progress)
        assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
        assert lines[0].startswith("coconav: error: "), lines[0]
        return lines[0][len("coconav: error: "):]


@pytest.fixture
def tiny_overrides() -> list[str]:
    """Config overrides for a tiny, fast run (a copy: tests may extend it)."""
    return list(TINY_OVERRIDES)


@pytest.fixture(scope="session")
def _cli_imports() -> None:
    """Import what the commands import lazily (seconds), once, in fixture setup rather than in a test."""
    import coconav.recipes.evaluate_checkpoint  # noqa: F401
    import coconav.recipes.train_coconut  # noqa: F401


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], _cli_imports: None):
    """Run `coconav ARGS...` in process: cli("train", "--config", ...) -> CliResult."""
    from coconav.cli import main

    def run(*argv: object) -> CliResult:
        capsys.readouterr()
        rc = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return CliResult(rc, out, err)

    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, _cli_imports: None) -> Path:
    """A finished tiny COCONUT run (stages 0-6, checkpoints, results.json), trained once per session.

    Read-only for tests: copy it (shutil.copytree) before changing anything inside.
    """
    from coconav.cli import main

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    rc = main(["train", "--config", str(DEMO_PRESET), *TINY_OVERRIDES, f"out_dir={out}"])
    assert rc == 0
    assert (out / "results.json").is_file()
    return out


# -- checkpoints in other shapes: LoRA adapters over a 'pretrained' base, bf16 weights ----------------

BASE_WORDS = ["<pad>", "<eos>", "<unk>"] + [str(i) for i in range(10)] + "+ - * = << >> ? ###".split()


@pytest.fixture(scope="session")
def nav_checkpoint(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A navigator checkpoint on the tiny COCONUT run, steering made live by hand (K trajectories differ)."""
    from coconav.checkpoint import TrainState, checkpoint_meta, save_checkpoint
    from coconav.config import RunConfig, from_dict, to_dict
    from coconav.model.latent_lm import LatentLM
    from coconav.model.navigator import Navigator

    stages = sorted((int(p.name.split("-")[1]), p) for p in (tiny_run / "checkpoints").glob("stage-*"))
    base = stages[-1][1]
    data = checkpoint_meta(base)["config"]
    data.update(init_from=str(base), navigator={"hidden": 16, "action_dim": 4, "max_thoughts": 4, "init_log_std": 0.0,
                                                "inference_temperature": 2.0, "trajectories_budget": 2.0})
    cfg = from_dict(RunConfig, data)
    lm = LatentLM.from_pretrained(base)
    torch.manual_seed(0)
    nav = Navigator(lm.hidden_size, cfg.navigator)
    with torch.no_grad():
        nav.up.weight.normal_(0, 3.0)
        nav.halt_head.weight.normal_(0, 1.0)
        nav.value_head.weight.normal_(0, 1.0)
        nav.scorer_head.weight.normal_(0, 1.0)
    out = tmp_path_factory.mktemp("nav") / "navigator"
    save_checkpoint(out, lm, TrainState(stage=0, step=1, global_step=1), to_dict(cfg), modules={"navigator": nav},
                    metrics={"base_thoughts": 4})
    return out


def save_pretrained_base(path: Path, arch: str = "llama") -> Path:
    """A tiny 'pretrained' model folder whose tokenizer lacks the latent tokens (like a hub model).
    arch 'gpt2' keeps GPT-2's default dropout of 0.1 (embeddings, residuals, attention)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(BASE_WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=256,
                                           eos_token_id=1, bos_token_id=1, pad_token_id=0))
        assert model.config.resid_pdrop == 0.1
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                             tie_word_embeddings=False, eos_token_id=1, bos_token_id=1, pad_token_id=0))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def coconut_checkpoint(path: Path, model: dict, dtype: torch.dtype = torch.float32, train_steps: int = 3) -> Path:
    """A COCONUT checkpoint as `coconav train` writes one (stage 2, one thought per step), built from the
    `model` section given (e.g. a base folder with LoRA), trained `train_steps` SGD steps so LoRA's B is
    non-zero, then cast to `dtype`."""
    from coconav.checkpoint import TrainState, save_checkpoint
    from coconav.config import RunConfig, from_dict, to_dict
    from coconav.model.build import build_latent_lm

    cfg = from_dict(RunConfig, {"model": model, "data": {"task": "arithmetic"},
                                "curriculum": {"mode": "coconut", "thoughts_per_step": 1, "max_stage": 2}})
    lm = build_latent_lm(cfg.model)
    s = lm.special
    ids = torch.tensor([[3, 4, 13, 5, s.bot, s.thought, s.thought, s.eot, 16, 6, 1]])
    params = [p for p in lm.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    for _ in range(train_steps):
        lm(ids, torch.ones_like(ids), labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    lm.to(dtype)
    save_checkpoint(path, lm, TrainState(stage=2, step=1, global_step=1), to_dict(cfg))
    return path


@pytest.fixture
def lora_coconut(tmp_path: Path) -> Path:
    """A LoRA COCONUT checkpoint (adapters on q_proj/v_proj, latent-token rows trained) over a Llama base."""
    base = save_pretrained_base(tmp_path / "base")
    return coconut_checkpoint(tmp_path / "coconut", {"name_or_path": str(base),
                                                     "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]}})


@pytest.fixture
def bf16_coconut(tmp_path: Path) -> Path:
    """A full (non-LoRA) COCONUT checkpoint stored in bfloat16."""
    base = save_pretrained_base(tmp_path / "base")
    return coconut_checkpoint(tmp_path / "coconut_bf16", {"name_or_path": str(base)}, dtype=torch.bfloat16)
