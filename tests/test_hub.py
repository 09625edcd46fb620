"""Checkpoints people can share (coconav/io/hub.py): the model card written from what each checkpoint is, the guard
that makes transformers' pipeline refuse a checkpoint, loading by Hub id (revision, token, cache folder) through a
local Hub cache with HF_HUB_OFFLINE=1, the exact upload list of `coconav push`, `CoconavModel.push_to_hub`, the push
at the end of training, and the one-line refusals.

Nothing touches the network: the Hub cache is a folder built here (models--USER--NAME/snapshots/<sha>,
refs/main), and pushes run against a stand-in HfApi that records what it would have sent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from coconav.errors import CheckpointError
from coconav.io.checkpoint import TrainState, checkpoint_meta, save_checkpoint
from coconav.io.hub import GUARD_FILE, PLOT_FILE, looks_like_repo_id, model_card, record_evaluation, upload_files

from conftest import DEMO_PRESET, TINY_OVERRIDES

SHA = "0123456789abcdef0123456789abcdef01234567"
# what a full (non-LoRA) checkpoint folder holds besides the trainer state: save_pretrained's files,
# coconav.json, the card and the pipeline guard
SHARED = [
    "README.md",
    "coconav.json",
    "coconav_pipeline.py",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
]
TRAINER = ["trainer_state.json", "trainer_state.safetensors"]


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache: HF_HUB_CACHE for new processes, huggingface_hub's constant for this one
    (it reads the variable once, at import)."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def place_in_cache(cache: Path, repo_id: str, checkpoint: Path, sha: str = SHA, ref: str = "main") -> Path:
    """Lay `checkpoint` out as snapshot_download leaves a downloaded model repo (branch `ref` at commit `sha`);
    returns the snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / sha
    shutil.copytree(checkpoint, snapshot)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(sha)
    return snapshot


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# -- the model card ------------------------------------------------------------------------------------


def test_every_checkpoint_has_a_card_that_the_hub_parser_reads(bf16_coconut: Path, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard, metadata_load

    from coconav.model.latent_lm import LatentLM

    run = tmp_path / "run"
    run.mkdir()
    (run / PLOT_FILE).write_bytes(b"\x89PNG fake")  # the run's accuracy-against-compute plot
    metrics = {"stage": 2, "accuracy": 0.625, "mean_thoughts": 2.0, "mean_forward_passes": 9.0}
    meta = checkpoint_meta(bf16_coconut)
    out = save_checkpoint(
        run / "checkpoints" / "stage-2",
        LatentLM.from_pretrained(bf16_coconut),
        TrainState(stage=2, step=1, global_step=1),
        meta["config"],
        metrics=metrics,
    )
    assert (out / PLOT_FILE).read_bytes() == b"\x89PNG fake"
    assert not any(p.name.startswith(".") for p in (run / "checkpoints").iterdir())  # no temporary folder left

    data = metadata_load(out / "README.md")
    assert data["library_name"] == "coconav"
    assert {"coconut", "latent-reasoning"} <= set(data["tags"])
    assert "base_model" not in data  # trained from a local folder: no Hub id to name
    card = ModelCard.load(out / "README.md")
    [result] = card.data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_split) == ("accuracy", 0.625, "validation")
    assert 'CoconavModel.from_pretrained("USER/NAME")' in card.text
    assert f"]({PLOT_FILE})" in card.text
    assert "thoughts_per_step: 1" in card.text  # the training config, as YAML


def test_card_names_the_hub_base_model_data_sets_and_navigator_tags() -> None:
    from huggingface_hub import ModelCard

    meta = {
        "config": {
            "model": {"name_or_path": "openai-community/gpt2", "lora": {"r": 8}},
            "data": {"task": "files", "train": "openai/gsm8k:train", "test": "openai/gsm8k:test"},
            "navigator": {"max_thoughts": 8},
        },
        "train_state": {"stage": 0, "global_step": 40},
        "metrics": {"accuracy": 0.4},
    }
    card = ModelCard(str(model_card(meta, repo_id="alice/gpt2-coconav")))
    data = card.data.to_dict()
    assert data["base_model"] == "openai-community/gpt2"
    assert data["datasets"] == ["openai/gsm8k"]
    assert {"navigator", "ppo", "lora"} <= set(data["tags"])
    assert card.data.eval_results[0].dataset_type == "openai/gsm8k"
    assert 'CoconavModel.from_pretrained("alice/gpt2-coconav")' in card.text
    assert "num_trajectories=5" in card.text
    assert (
        model_card({"config": {"model": {"name_or_path": "smollm2-135m"}}}).data.base_model
        == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    assert model_card({"config": {"model": {"name_or_path": "scratch-llama"}}}).data.base_model is None


def test_repo_ids() -> None:
    assert looks_like_repo_id("alice/gpt2-coconav") and looks_like_repo_id("org.x/name_1.v2")
    for text in ("/abs/path", "runs", "a/b/c", "./a", "a/../b", "a--b/c", "a/b.git", ""):
        assert not looks_like_repo_id(text), text


# -- loading by Hub id ---------------------------------------------------------------------------------


def test_a_cached_hub_checkpoint_loads_by_its_id_offline(
    bf16_coconut: Path, hub_cache: Path, cli, tmp_path: Path
) -> None:
    from coconav.inference import CoconavModel

    snapshot = place_in_cache(hub_cache, "alice/tiny-coconut", bf16_coconut)
    model = CoconavModel.from_pretrained("alice/tiny-coconut", device="cpu")
    assert model.lm.weight_dtype == torch.bfloat16 and model.stage == 2
    local = CoconavModel.from_pretrained(bf16_coconut, device="cpu")
    assert model.generate(["3 + 4 ?"], max_new_tokens=4) == local.generate(["3 + 4 ?"], max_new_tokens=4)

    result = cli("eval", "--checkpoint", "alice/tiny-coconut", "--max-questions", "2", "--device", "cpu")
    assert result.rc == 0, result.err
    report = json.loads(result.out)
    # named by repo id and commit, not by the snapshot folder (which says nothing on another machine)
    assert (report["checkpoint"], report["commit"], report["num_questions"]) == ("alice/tiny-coconut", SHA, 2)
    assert str(snapshot) not in result.out
    by_path = json.loads(cli("eval", "--checkpoint", bf16_coconut, "--max-questions", "2", "--device", "cpu").out)
    assert report["accuracy"] == by_path["accuracy"]
    page = tmp_path / "explorer.html"
    result = cli("explore", "--checkpoint", "alice/tiny-coconut", "--max-questions", "1", "--static", page)
    assert result.rc == 0, result.err
    assert page.is_file()
    assert files_under(hub_cache) == sorted(
        f"models--alice--tiny-coconut/{p}"
        for p in ["refs/main", *(f"snapshots/{SHA}/{f}" for f in files_under(bf16_coconut))]
    )


def test_an_id_missing_from_the_offline_cache_is_one_line_and_writes_nothing(
    hub_cache: Path, cli, tmp_path: Path
) -> None:
    for command in ("eval", "explore", "generate"):
        extra = (
            ["what ?"] if command == "generate" else ["--static", tmp_path / "x.html"] if command == "explore" else []
        )
        message = cli(command, "--checkpoint", "nobody/nothing", *extra).error()
        assert "nobody/nothing" in message and "not in the Hub cache" in message, message
    assert files_under(hub_cache) == [] and not (tmp_path / "x.html").exists()
    with pytest.raises(CheckpointError, match="not in the Hub cache"):
        from coconav.inference import CoconavModel

        CoconavModel.from_pretrained("nobody/nothing")


def test_a_private_repo_without_a_token_is_one_line(hub_cache: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    def refuse(repo_id: str, **kwargs):  # what the Hub answers for a private repo and no token: 401
        response = httpx2.Response(401, request=httpx2.Request("GET", f"https://huggingface.co/api/models/{repo_id}"))
        raise RepositoryNotFoundError("401 Client Error: Repository Not Found", response=response)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    message = cli("eval", "--checkpoint", "alice/private-model").error()
    assert "does not exist or is private" in message and "HF_TOKEN" in message, message


def test_an_unsupported_model_family_is_one_line(bf16_coconut: Path, hub_cache: Path, cli) -> None:
    snapshot = place_in_cache(hub_cache, "alice/t5-thing", bf16_coconut)
    config = json.loads((snapshot / "config.json").read_text())
    config.update(model_type="t5", architectures=["T5ForConditionalGeneration"])  # not a causal LM
    (snapshot / "config.json").write_text(json.dumps(config))
    message = cli("eval", "--checkpoint", "alice/t5-thing").error()
    assert "cannot load the model weights" in message and "AutoModelForCausalLM" in message, message


def test_a_hub_repo_that_is_not_a_coconav_checkpoint(bf16_coconut: Path, hub_cache: Path, cli) -> None:
    snapshot = place_in_cache(hub_cache, "alice/plain-model", bf16_coconut)
    (snapshot / "coconav.json").unlink()
    assert "not a coconav checkpoint" in cli("eval", "--checkpoint", "alice/plain-model").error()


# -- push ----------------------------------------------------------------------------------------------


def test_upload_list_is_safetensors_and_metadata_without_trainer_state(bf16_coconut: Path) -> None:
    assert upload_files(bf16_coconut) == SHARED
    assert upload_files(bf16_coconut, with_optimizer=True) == sorted(SHARED + TRAINER)


def test_upload_list_of_a_navigator_checkpoint_holds_its_module(nav_checkpoint: Path) -> None:
    files = upload_files(nav_checkpoint)
    assert "navigator.safetensors" in files and not set(TRAINER) & set(files)
    assert all(f.endswith((".safetensors", ".json", ".md")) or f == GUARD_FILE for f in files), files


def test_a_pickle_in_the_folder_is_refused(bf16_coconut: Path, tmp_path: Path, cli) -> None:
    folder = shutil.copytree(bf16_coconut, tmp_path / "ck")
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        upload_files(folder)
    assert "safetensors only" in cli("push", "--checkpoint", folder, "--repo-id", "a/b", "--dry-run").error()


def test_push_dry_run_prints_the_list(bf16_coconut: Path, cli) -> None:
    result = cli("push", "--checkpoint", bf16_coconut, "--repo-id", "alice/tiny", "--dry-run")
    assert result.rc == 0, result.err
    listed = [line.strip() for line in result.out.splitlines()[1:]]
    assert listed == SHARED
    result = cli("push", "--checkpoint", bf16_coconut, "--repo-id", "alice/tiny", "--dry-run", "--with-optimizer")
    assert [line.strip() for line in result.out.splitlines()[1:]] == sorted(SHARED + TRAINER)


class FakeApi:
    """Records create_repo / create_commit instead of calling the Hub."""

    calls: ClassVar[list] = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        FakeApi.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        FakeApi.calls.append(("create_branch", repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        FakeApi.calls.append(("create_commit", repo_id, list(operations), kwargs))


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch):
    """Offline mode off for `push` (the Hub itself stays out of reach: HfApi is FakeApi)."""
    import huggingface_hub
    import huggingface_hub.constants

    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub.constants, "is_offline_mode", lambda: False)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return monkeypatch


def test_push_uploads_exactly_the_list_in_one_commit(bf16_coconut: Path, online, cli) -> None:
    import huggingface_hub

    online.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    result = cli("push", "--checkpoint", bf16_coconut, "--repo-id", "alice/tiny", "--private")
    assert result.rc == 0, result.err
    (_, repo, kwargs), (_, _, ops, commit) = FakeApi.calls
    assert repo == "alice/tiny" and kwargs["private"] is True
    assert sorted(op.path_in_repo for op in ops) == SHARED
    assert commit == {"commit_message": f"coconav checkpoint {bf16_coconut.name}", "revision": None}
    card = next(op for op in ops if op.path_in_repo == "README.md").path_or_fileobj.decode()
    assert 'CoconavModel.from_pretrained("alice/tiny")' in card  # rendered for the repo it goes to
    config = json.loads(next(op for op in ops if op.path_in_repo == "config.json").path_or_fileobj)
    assert config["custom_pipelines"]["text-generation"]["impl"] == "coconav_pipeline.CoconavCheckpoint"


def test_push_without_a_token_is_one_line(bf16_coconut: Path, online, cli) -> None:
    import huggingface_hub

    online.setattr(huggingface_hub, "get_token", lambda: None)
    message = cli("push", "--checkpoint", bf16_coconut, "--repo-id", "alice/tiny", "--private").error()
    assert "needs a token" in message and "HF_TOKEN" in message, message
    assert FakeApi.calls == []


def test_push_refuses_bad_input(bf16_coconut: Path, tmp_path: Path, cli) -> None:
    assert "--repo-id must be 'owner/name'" in cli("push", "--checkpoint", bf16_coconut, "--repo-id", "nope").error()
    assert "not found" in cli("push", "--checkpoint", tmp_path / "missing", "--repo-id", "a/b").error()
    assert "HF_HUB_OFFLINE" in cli("push", "--checkpoint", bf16_coconut, "--repo-id", "a/b").error()


def test_push_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    from coconav.cli import main

    with pytest.raises(SystemExit) as info:
        main(["push", "--help"])
    assert info.value.code == 0 and "coconav push --checkpoint" in capsys.readouterr().out


def test_a_lora_checkpoint_over_a_local_base_is_pushed_with_a_warning(lora_coconut: Path, cli) -> None:
    files = upload_files(lora_coconut)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(files) and "model.safetensors" not in files
    result = cli("push", "--checkpoint", lora_coconut, "--repo-id", "alice/lora", "--dry-run")
    assert result.rc == 0 and "is a local folder" in result.err


# -- cards written from what the checkpoint is ----------------------------------------------------------


def card_of(config: dict, stage: int = 0) -> tuple[str, dict]:
    """(card text, front matter) of a checkpoint with this config, at this stage."""
    from huggingface_hub import ModelCard

    card = ModelCard(str(model_card({"config": config, "train_state": {"stage": stage, "global_step": 3}})))
    return card.text, card.data.to_dict()


def intro(text: str) -> str:
    """The card's first paragraph: what the checkpoint is."""
    return text.split("\n\n")[1]


@pytest.mark.parametrize(
    "config, stage, says, thinks",
    [
        ({"curriculum": {"mode": "no_cot"}}, 0, "A no-CoT baseline", False),
        ({"curriculum": {"mode": "cot"}}, 0, "A chain-of-thought baseline", False),
        ({"curriculum": {"mode": "coconut"}}, 0, "Stage 0 of the COCONUT curriculum", False),
        ({"curriculum": {"mode": "coconut", "max_stage": 2}}, 2, "answers after 2 continuous thoughts, then", True),
        ({"curriculum": {"mode": "coconut", "max_stage": 2, "thoughts_per_step": 2}}, 3, "after 4 continuous", True),
    ],
)
def test_a_card_says_what_its_checkpoint_does(config: dict, stage: int, says: str, thinks: bool) -> None:
    text, data = card_of(config, stage)
    assert says in intro(text), intro(text)
    # only a checkpoint that thinks in continuous thoughts claims them, in its words and its tags
    assert ("A continuous thought (COCONUT" in intro(text)) is thinks
    assert ("answers after" in intro(text)) is thinks
    assert ("continuous-thought" in data["tags"]) is thinks
    assert f"| `curriculum.mode` | {config['curriculum']['mode']} |" in text  # its preset's real settings


def test_a_navigator_card_claims_steering_only_when_its_config_steers() -> None:
    navigator = {"max_thoughts": 6, "max_trajectories": 4}
    text, _ = card_of({"init_from": "runs/x", "navigator": {**navigator, "steering": False}})
    assert "does not steer" in intro(text) and "steers each thought" not in intro(text)
    assert "| `navigator.steering` | false |" in text and "| `navigator.max_thoughts` | 6 |" in text
    text, _ = card_of({"init_from": "runs/x", "navigator": {**navigator, "steering": True}})
    assert "steers each thought" in intro(text) and "does not steer" not in intro(text)
    text, _ = card_of({"init_from": "runs/x", "navigator": {**navigator, "halting": False}})
    assert "always takes 6 continuous thoughts" in intro(text)


def test_every_card_has_licence_versions_citation_and_a_source_install() -> None:
    import torch
    import transformers

    from coconav import __version__

    text, data = card_of({"curriculum": {"mode": "coconut"}}, 2)
    assert data["license"] == "mit" and data["library_name"] == "coconav"
    # no Hub widget and no task tag that would make a plain text-generation pipeline look right
    assert data["inference"] is False and "pipeline_tag" not in data
    for package, version in (("coconav", __version__), ("torch", torch.__version__), ("transformers", None)):
        assert f"{package}=={version or transformers.__version__}" in text
    assert "arXiv:2412.06769" in text and "@software{coconav" in text  # the COCONUT paper and coconav
    assert "pip install -e" in text and "pip install coconav" not in text  # no package index serves coconav
    saved = {"coconav": "0.0.9", "torch": "2.6.0", "transformers": "5.1.0"}  # the versions it was saved with win
    assert "torch==2.6.0" in str(model_card({"config": {}, "versions": saved}))


def test_test_results_and_the_figure_reach_the_card_and_the_push(bf16_coconut: Path, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    from coconav.model.latent_lm import read_metadata

    folder = shutil.copytree(bf16_coconut, tmp_path / "ck")
    plot = tmp_path / PLOT_FILE
    plot.write_bytes(b"\x89PNG fake")
    numbers = {"accuracy": 0.5, "mean_thoughts": 2.0, "mean_forward_passes": 7.0, "seconds_per_question": 0.1}
    record_evaluation(
        folder,
        {"test": {"split": "test", **numbers}, "validation": {"split": "validation", **numbers, "accuracy": 0.75}},
        plot=plot,
    )
    card = ModelCard.load(folder / "README.md")
    results = [(r.dataset_split, r.metric_value) for r in card.data.eval_results]
    assert results == [("validation", 0.75), ("test", 0.5)]  # model-index, validation first
    assert "| test | test | 0.500 | 2.00 | 7.0 |" in card.text and f"]({PLOT_FILE})" in card.text
    assert (folder / PLOT_FILE).read_bytes() == b"\x89PNG fake"
    kept = read_metadata(folder)["evaluation"]["test"]  # the card's numbers, not the whole summary
    assert kept == {"split": "test", "accuracy": 0.5, "mean_thoughts": 2.0, "mean_forward_passes": 7.0}
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left
    # what `push` renders again for the repo keeps them
    pushed = model_card(read_metadata(folder), repo_id="alice/tiny", plot=PLOT_FILE)
    assert [r.dataset_split for r in pushed.data.eval_results] == ["validation", "test"]
    assert PLOT_FILE in upload_files(folder)
    with pytest.raises(CheckpointError, match="split must be"):
        record_evaluation(folder, {"test": {"split": "train", "accuracy": 1.0}})


# -- transformers alone --------------------------------------------------------------------------------


def test_transformers_pipeline_refuses_a_coconav_checkpoint_with_a_message(
    bf16_coconut: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # where it copies the guard
    assert (bf16_coconut / GUARD_FILE).is_file()
    for task in ("text-generation", None):  # named, or read from the config
        with pytest.raises(ValueError, match="trust_remote_code"):
            transformers.pipeline(task, model=str(bf16_coconut))
    with pytest.raises(RuntimeError, match="this is a coconav checkpoint.*CoconavModel.from_pretrained"):
        transformers.pipeline("text-generation", model=str(bf16_coconut), trust_remote_code=True)
    # the weights themselves still load as the plain causal LM they are
    model = transformers.AutoModelForCausalLM.from_pretrained(bf16_coconut)
    assert model.config.custom_pipelines["text-generation"]["impl"] == "coconav_pipeline.CoconavCheckpoint"


# -- revision, token and cache folder --------------------------------------------------------------------


def test_revision_token_and_cache_dir_choose_the_snapshot(
    bf16_coconut: Path, hub_cache: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    from coconav.inference import CoconavModel

    cache, v1 = tmp_path / "elsewhere", "fedcba9876543210fedcba9876543210fedcba98"
    place_in_cache(cache, "alice/tiny", bf16_coconut)
    place_in_cache(cache, "alice/tiny", bf16_coconut, sha=v1, ref="v1")
    model = CoconavModel.from_pretrained("alice/tiny", revision="v1", cache_dir=cache, device="cpu")
    assert model.path == cache / "models--alice--tiny" / "snapshots" / v1
    assert CoconavModel.from_pretrained("alice/tiny", cache_dir=cache).path.name == SHA  # main
    with pytest.raises(CheckpointError, match="at revision 'v2' is not in the Hub cache"):
        CoconavModel.from_pretrained("alice/tiny", revision="v2", cache_dir=cache)
    with pytest.raises(CheckpointError, match="not in the Hub cache"):  # the default cache (hub_cache) is empty
        CoconavModel.from_pretrained("alice/tiny")
    with pytest.raises(CheckpointError, match="local folder"):
        CoconavModel.from_pretrained(bf16_coconut, revision="v1")

    seen = {}
    download = huggingface_hub.snapshot_download

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return download(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    CoconavModel.from_pretrained("alice/tiny", token="hf_secret", cache_dir=cache)
    assert (seen["token"], seen["cache_dir"], seen["revision"]) == ("hf_secret", str(cache), None)

    hub = ["--checkpoint", "alice/tiny", "--revision", "v1", "--cache-dir", cache, "--token", "hf_secret"]
    result = cli("eval", *hub, "--max-questions", "1", "--device", "cpu")
    assert result.rc == 0, result.err
    report = json.loads(result.out)
    assert (report["checkpoint"], report["commit"]) == ("alice/tiny", v1) and seen["revision"] == "v1"
    result = cli("generate", *hub, "3 + 4 ?", "--device", "cpu")
    assert result.rc == 0 and result.out.strip(), result.err
    assert "--zero-shot" in cli("eval", "--zero-shot", "m", "--data", "x.jsonl", "--revision", "v1").error()


# -- pushing from Python and at the end of training -------------------------------------------------------


def test_model_push_to_hub_uploads_its_checkpoint(bf16_coconut: Path, online) -> None:
    from coconav.inference import CoconavModel

    model = CoconavModel.from_pretrained(bf16_coconut, device="cpu")
    url = model.push_to_hub("alice/tiny", revision="dev", private=True, commit_message="first", token="hf_x")
    assert url == "https://huggingface.co/alice/tiny"
    (_, _, repo), (_, _, branch), (_, _, ops, commit) = FakeApi.calls
    assert repo == {"private": True, "exist_ok": True} and branch == {"branch": "dev", "exist_ok": True}
    assert commit == {"commit_message": "first", "revision": "dev"}
    assert sorted(op.path_in_repo for op in ops) == SHARED
    FakeApi.calls = []
    model.push_to_hub("alice/tiny", token="hf_x")
    assert [call[0] for call in FakeApi.calls] == ["create_repo", "create_commit"]  # main: no branch to create
    assert FakeApi.calls[0][2]["private"] is None  # the Hub's default


def test_train_pushes_its_final_checkpoint_with_its_test_results(tmp_path: Path, online, cli) -> None:
    import huggingface_hub

    online.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    out = tmp_path / "run"
    push = ["train.push_to_hub=true", "train.hub_model_id=alice/run", "curriculum.max_stage=1"]
    result = cli("train", "--config", DEMO_PRESET, *TINY_OVERRIDES, *push, f"out_dir={out}")
    assert result.rc == 0, result.err
    (_, repo, _), (_, _, ops, _) = FakeApi.calls
    card = next(op for op in ops if op.path_in_repo == "README.md").path_or_fileobj.decode()
    test = json.loads((out / "results.json").read_text())["test"]
    assert repo == "alice/run" and f"| test | test | {test['accuracy']:.3f} |" in card
    assert "| validation | validation |" in card and "alice/run" in result.out


def test_a_push_that_cannot_happen_is_refused_before_the_run_starts(tmp_path: Path, cli) -> None:
    from coconav.config import RunConfig, from_dict
    from coconav.errors import ConfigError

    out = tmp_path / "run"
    push = ["train.push_to_hub=true", "train.hub_model_id=alice/run"]
    message = cli("train", "--config", DEMO_PRESET, *TINY_OVERRIDES, *push, f"out_dir={out}").error()
    assert "HF_HUB_OFFLINE" in message and not out.exists(), message
    with pytest.raises(ConfigError, match="train.hub_model_id=OWNER/NAME"):
        from_dict(RunConfig, {"train": {"push_to_hub": True}})
