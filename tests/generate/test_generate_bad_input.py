"""Sampling settings that cannot mean anything are refused, naming the option, before a model loads."""

from __future__ import annotations

import math

import pytest
import torch

from megagpt.config import ModelConfig
from megagpt.model.gpt import GPT
from megagpt.tasks.generate import generate, main


@pytest.mark.parametrize("option, value, message", [
    ("--temperature", "-1", "--temperature must be a finite number >= 0 (0 is greedy), got -1.0"),
    ("--temperature", "nan", "--temperature must be a finite number >= 0 (0 is greedy), got nan"),
    ("--max-new", "-5", "--max-new must be 0 or more new tokens, got -5"),
    ("--top-k", "-1", "--top-k must be positive (or 0 / unset for no limit), got -1"),
    ("--top-p", "1.5", "--top-p must lie in (0, 1], got 1.5"),
])
def test_command_line_refuses_nonsense_naming_the_option(option, value, message, tmp_path, capsys):
    # The checkpoint does not exist: the settings are refused before anything is loaded.
    with pytest.raises(SystemExit) as exit_:
        main(["--checkpoint", str(tmp_path / "none"), "--prompt", "The", option, value])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_checkpoint_is_named_without_a_traceback(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "none"), "--prompt", "The"]) == 2
    assert f"checkpoint {tmp_path / 'none'} does not exist" in capsys.readouterr().err


def test_the_library_refuses_the_same():
    gpt = GPT(ModelConfig.preset("gpt2-tiny", block_size=16)).eval()
    for kwargs in ({"temperature": -0.5}, {"temperature": math.inf}, {"max_new_tokens": -1}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            generate(gpt, [[1, 2]], **{"max_new_tokens": 3, **kwargs}, generator=torch.Generator())
