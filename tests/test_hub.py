"""Checkpoints people can share (coconav/hub.py): the model card, loading by Hub id through a local Hub
cache with HF_HUB_OFFLINE=1, the exact upload list of `coconav push`, and the one-line refusals.

Nothing touches the network: the Hub cache is a folder built here (models--USER--NAME/snapshots/<sha>,
refs/main), and `push` runs against a stand-in HfApi that records what it would have sent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from coconav.checkpoint import TrainState, checkpoint_meta, save_checkpoint
from coconav.errors import CheckpointError
from coconav.hub import PLOT_FILE, looks_like_repo_id, model_card, upload_files

SHA = "0123456789abcdef0123456789abcdef01234567"
# what a full (non-LoRA) checkpoint folder holds besides the trainer state: save_pretrained's files,
# coconav.json and the card
SHARED = [
    "README.md",
    "coconav.json",
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


def place_in_cache(cache: Path, repo_id: str, checkpoint: Path) -> Path:
    """Lay `checkpoint` out as snapshot_download leaves a downloaded model repo; returns the snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / SHA
    shutil.copytree(checkpoint, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
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
    assert report["checkpoint"] == str(snapshot) and report["num_questions"] == 2
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
    assert all(f.endswith((".safetensors", ".json", ".md")) for f in files), files


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

    def create_commit(self, repo_id, operations, **kwargs):
        FakeApi.calls.append(("create_commit", repo_id, list(operations)))


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
    (_, repo, kwargs), (_, _, ops) = FakeApi.calls
    assert repo == "alice/tiny" and kwargs["private"] is True
    assert sorted(op.path_in_repo for op in ops) == SHARED
    card = next(op for op in ops if op.path_in_repo == "README.md").path_or_fileobj.decode()
    assert 'CoconavModel.from_pretrained("alice/tiny")' in card  # rendered for the repo it goes to


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
