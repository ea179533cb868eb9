"""Hugging Face interop: export a checkpoint as a `transformers` GPT-2 folder, import one back.

    python -m megagpt.convert to-hf runs/demo hf/demo          # any checkpoint or model folder
    python -m megagpt.convert from-hf hf/demo models/demo      # a local save_pretrained folder

`to-hf` writes model.safetensors + config.json (GPT2LMHeadModel.from_pretrained loads it) and the
tokenizer as `AutoTokenizer` loads it (GPT-2's BPE, or megagpt's sentencepiece BPE rebuilt as a
`tokenizers` pipeline giving the same ids), so the folder is all `lm_eval --model hf` needs.
`from-hf` writes a megagpt model folder (see megagpt.checkpoint.pretrained) that every megagpt command
accepts. Nothing is downloaded. Both refuse an output folder that is not empty unless given --force,
and write into a temporary sibling that replaces it only once complete.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from megagpt.checkpoint import load_pretrained, replacing_folder, save_model
from megagpt.formats.tokenizer import GPT2Tokenizer, Tokenizer, load_tokenizer
from megagpt.model.gpt import GPT

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPACE = "\u2581"  # sentencepiece's visible space


def sentencepiece_to_hf(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """megagpt's sentencepiece BPE as a `transformers` fast tokenizer that gives the same ids.

    sentencepiece encodes each whitespace-led word (a run of spaces stays with the word after it)
    by merging the adjacent pair whose merged piece scores best, falling back to bytes; the newline
    is a user symbol that never merges. The `tokenizers` pipeline below does the same: spaces become
    U+2581, words split before a U+2581 that ends a non-space run, merges ranked by the merged
    piece's score, byte fallback. tests/interop checks the ids on real text.
    """
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    pieces = SentencePieceExtractor(str(tokenizer.path)).extract(models.BPE)
    unk = tokenizer.sp.id_to_piece(tokenizer.sp.unk_id())
    bpe = HFTokenizer(models.BPE(vocab=pieces["vocab"], merges=pieces["merges"], unk_token=unk,
                                 fuse_unk=True, byte_fallback=True))
    bpe.normalizer = normalizers.Replace(" ", SPACE)
    bpe.pre_tokenizer = pre_tokenizers.Split(Regex(f"(?<!{SPACE}){SPACE}"), behavior="merged_with_next")
    bpe.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    bpe.add_tokens([AddedToken("\n", normalized=False)])
    eos = tokenizer.sp.id_to_piece(tokenizer.eos_id)
    bpe.add_special_tokens([AddedToken(unk, special=True), AddedToken(eos, special=True)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=eos, eos_token=eos, unk_token=unk)


def to_hf(checkpoint: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    with replacing_folder(Path(out_dir), force) as out:
        _write_hf(checkpoint, out)
    return Path(out_dir)


def _write_hf(checkpoint: str | Path, out: Path) -> None:
    model, tokenizer, _ = load_pretrained(checkpoint, device="cpu")
    hf = model.to_hf(eos_token_id=tokenizer.eos_id)
    hf.save_pretrained(out)
    if isinstance(tokenizer, GPT2Tokenizer):
        from transformers import GPT2TokenizerFast

        hf_tok = GPT2TokenizerFast(vocab=str(tokenizer.encoder_file), merges=str(tokenizer.merges_file))
        hf_tok.save_pretrained(out)
        for src, name in tokenizer.files().items():  # also as OpenAI's names, for megagpt
            shutil.copyfile(src, out / name)
    else:
        sentencepiece_to_hf(tokenizer).save_pretrained(out)
        for src, name in tokenizer.files().items():  # megagpt reads the sentencepiece model itself
            shutil.copyfile(src, out / name)


def from_hf(hf_dir: str | Path, out: str | Path, force: bool = False) -> Path:
    from transformers import GPT2LMHeadModel

    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise FileNotFoundError(f"{hf_dir} has no config.json: pass a local save_pretrained folder")
    tokenizer = load_tokenizer(hf_dir)  # before the weights: fail fast on a folder without one
    with replacing_folder(Path(out), force) as tmp:
        hf = GPT2LMHeadModel.from_pretrained(hf_dir, local_files_only=True)
        model = GPT.from_hf(hf)
        save_model(tmp, model.state_dict(), model.config, tokenizer)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("to-hf", help="checkpoint or model folder -> transformers GPT-2 folder")
    a.add_argument("checkpoint")
    a.add_argument("out_dir")
    b = sub.add_parser("from-hf", help="transformers GPT-2 folder -> megagpt model folder")
    b.add_argument("hf_dir")
    b.add_argument("out")
    for sub_parser in (a, b):
        sub_parser.add_argument("--force", action="store_true",
                                help="replace a non-empty output folder (only once the new one is complete)")
    args = p.parse_args(argv)
    try:
        if args.command == "to-hf":
            out = to_hf(args.checkpoint, args.out_dir, args.force)
        else:
            out = from_hf(args.hf_dir, args.out, args.force)
    except (FileNotFoundError, ValueError) as e:
        print(f"megagpt.checkpoint.huggingface: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0

