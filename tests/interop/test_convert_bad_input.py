"""Export and import never overwrite a folder silently, and a model folder that does not add up is
named with the fix instead of a state_dict traceback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel

from megagpt import checkpoint
from megagpt.checkpoint import huggingface as convert
from megagpt.config import ModelConfig
from megagpt.formats.tokenizer import Tokenizer
from megagpt.model.gpt import GPT
from megagpt.tasks import generate
from tests.test_data_bad_input import swap_tokenizer


@pytest.fixture
def model_folder(corpus, tmp_path) -> Path:
    """A megagpt model folder: a tiny GPT-2 with the corpus's tokenizer, checksums included."""
    torch.manual_seed(0)
    model = GPT(ModelConfig.preset("gpt2-tiny", block_size=32))
    folder = tmp_path / "model"
    checkpoint.save_model(folder, model.state_dict(), model.config, Tokenizer(corpus / "tokenizer.model"))
    return folder


def siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def test_export_into_a_non_empty_folder_is_refused_unless_forced(model_folder, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert convert.main(["to-hf", str(model_folder), str(out)]) == 2
    assert (f"{out} is not empty: choose a new folder, or pass --force to replace it (the new one is written "
            "beside it and swapped in only when complete)") in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

    assert convert.main(["to-hf", str(model_folder), str(out), "--force"]) == 0
    assert not (out / "notes.txt").exists()
    assert GPT2LMHeadModel.from_pretrained(out, local_files_only=True).config.n_embd == 64
    assert siblings(out) == []  # no temporary or old folder left beside it


def test_a_failed_forced_export_leaves_the_old_folder_as_it_was(model_folder, tmp_path, capsys):
    out = tmp_path / "hf"
    assert convert.main(["to-hf", str(model_folder), str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    config = model_folder / "model_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "n_embd": 128}))
    checkpoint.write_checksums(model_folder)  # recorded so: a folder whose config never fit its weights
    assert convert.main(["to-hf", str(model_folder), str(out), "--force"]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert siblings(out) == []
    err = capsys.readouterr().err
    assert (f"{config} (n_layer=2, n_embd=128, vocab_size=512, block_size=32) disagrees with the weights in "
            f"{model_folder}: transformer.wte.weight is (512, 64) in the weights but (512, 128) by the config"
            ) in err
    assert "fix model_config.json to describe the weights, or export the model again" in err


def test_import_into_a_non_empty_folder_is_refused(model_folder, tmp_path, capsys):
    assert convert.main(["to-hf", str(model_folder), str(tmp_path / "hf")]) == 0
    assert convert.main(["from-hf", str(tmp_path / "hf"), str(model_folder)]) == 2
    assert f"{model_folder} is not empty" in capsys.readouterr().err
    assert convert.main(["from-hf", str(tmp_path / "hf"), str(model_folder), "--force"]) == 0
    checkpoint.verify(model_folder)


def test_corrupt_weights_are_named(model_folder, capsys):
    weights = model_folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = b"\x00\x00\xc0\x7f"  # the last float becomes NaN: still loads, silently wrong
    weights.write_bytes(bytes(data))
    with pytest.raises(checkpoint.DamagedCheckpoint, match=f"{weights} does not match its checksum in "
                                                           "checksums.json"):
        checkpoint.load_pretrained(model_folder, device="cpu")
    weights.write_bytes(bytes(data[:-100]))
    assert convert.main(["to-hf", str(model_folder), str(model_folder.parent / "hf")]) == 2
    assert f"{weights} has {len(data) - 100} bytes, {len(data)} when saved" in capsys.readouterr().err


def test_an_edited_model_config_is_named_by_every_reader(model_folder, capsys):
    config = model_folder / "model_config.json"
    text = config.read_text()
    assert '"n_head": 4' in text
    config.write_text(text.replace('"n_head": 4', '"n_head": 2'))  # same weight shapes: it would run
    damaged = re.escape(f"checkpoint {model_folder} is damaged: {config} does not match its checksum")
    for read in (checkpoint.read_model_config, checkpoint.consolidated_state_dict,
                 lambda f: checkpoint.load_pretrained(f, device="cpu")):
        with pytest.raises(checkpoint.DamagedCheckpoint, match=damaged):
            read(model_folder)
    assert convert.main(["to-hf", str(model_folder), str(model_folder.parent / "hf")]) == 2
    assert re.search(damaged, capsys.readouterr().err)


def test_a_tokenizer_swapped_for_another_valid_one_is_named_by_every_reader(model_folder, capsys):
    swap_tokenizer(model_folder)  # trained on other text: loads, encodes, all wrong
    damaged = re.escape(f"checkpoint {model_folder} is damaged: {model_folder / 'tokenizer.model'} has")
    for read in (checkpoint.find_tokenizer, checkpoint.consolidated_state_dict,
                 lambda f: checkpoint.load_pretrained(f, device="cpu")):
        with pytest.raises(checkpoint.DamagedCheckpoint, match=damaged):
            read(model_folder)
    assert generate.main(["--checkpoint", str(model_folder), "--prompt", "The", "--max-new", "2"]) == 2
    assert re.search(damaged, capsys.readouterr().err)
