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

import random  # noqa: E402
import re  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from coconav.config import ModelConfig, NavigatorConfig  # noqa: E402
from coconav.data.curriculum import encode_question  # noqa: E402
from coconav.data.tasks import get_task  # noqa: E402
from coconav.data.tokenizer import task_tokenizer  # noqa: E402
from coconav.model.build import build_latent_lm  # noqa: E402
from coconav.model.latent_lm import LatentLM  # noqa: E402
from coconav.model.navigator import Navigator  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
DEMO_PRESET = REPO / "configs" / "demo.yaml"
TEST_DATA_VARIABLE = "COCONAV_TEST_DATA"


def real_data_path(relative: str) -> Path:
    """`$COCONAV_TEST_DATA/relative`: skips when the variable is unset, fails when the file is missing."""
    folder = os.environ.get(TEST_DATA_VARIABLE)
    if not folder:
        pytest.skip(
            f"{TEST_DATA_VARIABLE} is not set (a folder laid out like the project's shared data: "
            "gsm8k/, gsm8k_aug/, prosqa/)"
        )
    path = Path(folder) / relative
    assert path.is_file(), f"{TEST_DATA_VARIABLE}={folder} has no {relative}"
    return path


@pytest.fixture
def real_data():
    """The real-data lookup as a fixture: real_data("gsm8k/test.jsonl") -> Path (see real_data_path)."""
    return real_data_path


def assert_close_tree(actual, expected, *, abs: float, rel: float = 0.0, where: str = "") -> None:
    """Nested dicts and lists equal: strings, integers and booleans exactly, floats within `abs` + `rel`.

    Two computations of one float (a page batching its questions one way, the API another) may differ in
    the last digit: the CPU's summation order depends on the batch shape and on the CPU itself."""
    if isinstance(expected, float) or isinstance(actual, float):
        assert isinstance(actual, (int, float)) and not isinstance(actual, bool), f"{where}: {actual!r}"
        assert actual == pytest.approx(expected, abs=abs, rel=rel), f"{where}: {actual!r} != {expected!r}"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), f"{where}: keys {actual!r}"
        for key in expected:
            assert_close_tree(actual[key], expected[key], abs=abs, rel=rel, where=f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), f"{where}: {actual!r}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close_tree(a, e, abs=abs, rel=rel, where=f"{where}[{i}]")
    else:
        assert actual == expected and type(actual) is type(expected), f"{where}: {actual!r} != {expected!r}"


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
        return lines[0][len("coconav: error: ") :]


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
    from coconav.config import RunConfig, from_dict, to_dict
    from coconav.io.checkpoint import TrainState, checkpoint_meta, save_checkpoint
    from coconav.model.latent_lm import LatentLM
    from coconav.model.navigator import Navigator

    stages = sorted((int(p.name.split("-")[1]), p) for p in (tiny_run / "checkpoints").glob("stage-*"))
    base = stages[-1][1]
    data = checkpoint_meta(base)["config"]
    data.update(
        init_from=str(base),
        navigator={
            "hidden": 16,
            "action_dim": 4,
            "max_thoughts": 4,
            "init_log_std": 0.0,
            "inference_temperature": 2.0,
            "trajectories_budget": 2.0,
        },
    )
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
    save_checkpoint(
        out,
        lm,
        TrainState(stage=0, step=1, global_step=1),
        to_dict(cfg),
        modules={"navigator": nav},
        metrics={"base_thoughts": 4},
    )
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
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=len(tok),
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_positions=256,
                eos_token_id=1,
                bos_token_id=1,
                pad_token_id=0,
            )
        )
        assert model.config.resid_pdrop == 0.1
    else:
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(tok),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=4,
                tie_word_embeddings=False,
                eos_token_id=1,
                bos_token_id=1,
                pad_token_id=0,
            )
        )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def coconut_checkpoint(path: Path, model: dict, dtype: torch.dtype = torch.float32, train_steps: int = 3) -> Path:
    """A COCONUT checkpoint as `coconav train` writes one (stage 2, one thought per step), built from the
    `model` section given (e.g. a base folder with LoRA), trained `train_steps` SGD steps so LoRA's B is
    non-zero, then cast to `dtype`."""
    from coconav.config import RunConfig, from_dict, to_dict
    from coconav.io.checkpoint import TrainState, save_checkpoint
    from coconav.model.build import build_latent_lm

    cfg = from_dict(
        RunConfig,
        {
            "model": model,
            "data": {"task": "arithmetic"},
            "curriculum": {"mode": "coconut", "thoughts_per_step": 1, "max_stage": 2},
        },
    )
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
    return coconut_checkpoint(
        tmp_path / "coconut",
        {"name_or_path": str(base), "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]}},
    )


@pytest.fixture
def bf16_coconut(tmp_path: Path) -> Path:
    """A full (non-LoRA) COCONUT checkpoint stored in bfloat16."""
    base = save_pretrained_base(tmp_path / "base")
    return coconut_checkpoint(tmp_path / "coconut_bf16", {"name_or_path": str(base)}, dtype=torch.bfloat16)


# Tiny models and navigators shared by the model, decode and rl tests ---------------------------------------

MAX_THOUGHTS = 5


def tiny_lm(seed: int = 2, hidden: int = 32) -> LatentLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(name_or_path="scratch-llama", hidden_size=hidden, num_layers=2, num_heads=4, intermediate_size=64)
    return build_latent_lm(cfg, task_tokenizer("arithmetic")).eval()


def questions(n: int, seed: int = 1) -> list:
    rng = random.Random(seed)
    task = get_task("arithmetic")
    return [task.generate(rng, 1 + i % 4) for i in range(n)]


def steering_navigator(seed: int = 4, **cfg) -> Navigator:
    """A navigator that steers (nonzero U and mean head) and halts greedily (sample=False) or by sampling."""
    torch.manual_seed(seed)
    nav = Navigator(32, NavigatorConfig(hidden=16, action_dim=4, max_thoughts=MAX_THOUGHTS, **cfg))
    with torch.no_grad():
        nav.halt_head.weight.normal_(0, 3.0)
        nav.halt_head.bias.fill_(-1.0)
        nav.mean_head.weight.normal_(0, 1.0)
        nav.up.weight.normal_(0, 1.0)
    return nav.eval()


class ScheduledHalt(Navigator):
    """A steering navigator whose halt logits are replaced by a schedule: the question whose key (h_0) is
    nearest to keys[j] halts at step targets[j] (logit +8 from that step on, -8 before). Nearest-key
    matching makes the schedule the same in a batch and alone (float noise is far below key distances)."""

    def set_schedule(self, keys: torch.Tensor, targets: list[int]) -> None:
        dist = torch.cdist(keys, keys) + torch.eye(len(keys)) * 1e9
        assert float(dist.min()) > 1e-2, "questions with (nearly) equal keys cannot get different schedules"
        self.keys, self.targets = keys.float(), torch.tensor(targets)

    def forward(self, states, question_keys, *rest, **kw):
        out = super().forward(states, question_keys, *rest, **kw)
        target = self.targets[torch.cdist(question_keys.float(), self.keys).argmin(-1)]  # [B]
        t = torch.arange(states.shape[1])[None, -out.halt_logits.shape[1] :]  # the last step only with last_only
        out.halt_logits = torch.where(t >= target[:, None], 8.0, -8.0) + 0.0 * out.halt_logits
        return out


SCHEDULE = [3, 5, 0, 1, 5, 2, 4, 0]  # thoughts per question: 0 and the budget (5) included


def scheduled_navigator(lm: LatentLM, examples) -> ScheduledHalt:
    torch.manual_seed(4)
    nav = ScheduledHalt(32, NavigatorConfig(hidden=16, action_dim=4, max_thoughts=MAX_THOUGHTS))
    with torch.no_grad():
        nav.mean_head.weight.normal_(0, 1.0)
        nav.up.weight.normal_(0, 1.0)
    keys = lm.prefill([encode_question(lm.tokenizer, ex.question) + [lm.special.bot] for ex in examples]).last_hidden
    nav.set_schedule(keys, SCHEDULE[: len(examples)])
    return nav.eval()


def varied_lm(name: str = "scratch-llama") -> LatentLM:
    """A random model whose greedy tokens vary (weights N(0, 0.1^2)), so token equality means something."""
    torch.manual_seed(3)
    cfg = ModelConfig(name_or_path=name, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    lm = build_latent_lm(cfg, task_tokenizer("arithmetic")).eval()
    with torch.no_grad():
        for param in lm.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.1)
    return lm


def prompts_for(lm: LatentLM, n: int = 12, seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 11, (n,), generator=gen)
    return [torch.randint(5, 20, (int(k),), generator=gen).tolist() + [lm.special.bot] for k in lengths]


# A graph question shaped like a ProsQA record (invented words), and a tiny model over its words ---------------------

GRAPH_RECORD = {
    "question": "Every wumpus is a rempus. Every zumpus is a gorpus. Alex is a wumpus. Alex is a zumpus. "
    "Every rempus is a lempus. Every gorpus is a yumpus. Bo is a tumpus. Every tumpus is a yumpus. "
    "Is Alex a lempus or tumpus?",
    "steps": ["Alex is a wumpus.", "Every wumpus is a rempus.", "Every rempus is a lempus."],
    "answer": "Alex is a lempus.",
    # 9 has no edge and no word in the question: a node whose word a tokenizer may lack
    "idx_to_symbol": ["Alex", "Bo", "wumpus", "zumpus", "rempus", "gorpus", "lempus", "yumpus", "tumpus", "kumpus"],
    "edges": [[0, 2], [0, 3], [2, 4], [3, 5], [4, 6], [5, 7], [1, 8], [8, 7]],
    "root": 0,
    "target": 6,
    "neg_target": 8,
}
GRAPH_DISTANCES = [0, None, 1, 1, 2, 2, 3, 3, None, None]  # BFS from Alex


def graph_example(record: dict | None = None):
    """The record as the COCONUT JSON reader returns it: the graph's keys in meta (tests/eval/test_search.py)."""
    from coconav.data.records import Example

    record = dict(record or GRAPH_RECORD)
    meta = {k: v for k, v in record.items() if k not in ("question", "steps", "answer")}
    return Example(record["question"], tuple(record["steps"]), record["answer"], answer_type="text", meta=meta)


def graph_model(thoughts: int = 3, known: int = 9):
    """A random CoconavModel (word tokenizer over GRAPH_RECORD's words but the last node's, COCONUT with a fixed
    `thoughts`) whose LM head is peaked (weights N(0, 0.5^2)), so node probabilities change from step to step."""
    from coconav.config import RunConfig, from_dict
    from coconav.data.tokenizer import build_word_tokenizer
    from coconav.inference import CoconavModel

    words = re.findall(r"\w+", " ".join([GRAPH_RECORD["question"], *GRAPH_RECORD["steps"], GRAPH_RECORD["answer"]]))
    words += [w for w in GRAPH_RECORD["idx_to_symbol"][:known] if w not in words]
    cfg = from_dict(RunConfig, {"eval": {"num_thoughts": thoughts, "max_new_tokens": 6, "batch_size": 4}})
    torch.manual_seed(5)
    model_cfg = ModelConfig(
        name_or_path="scratch-llama", hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64
    )
    lm = build_latent_lm(model_cfg, build_word_tokenizer(words)).eval()
    with torch.no_grad():
        for param in lm.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.5)
    return CoconavModel(lm=lm, config=cfg, stage=0)
