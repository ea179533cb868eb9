"""Hugging Face interop: export a checkpoint as a `transformers` GPT-2 folder, import one back.

    python -m megagpt.convert to-hf runs/demo hf/demo          # any checkpoint or model folder
    python -m megagpt.convert from-hf hf/demo models/demo      # a local save_pretrained folder

`to-hf` writes model.safetensors + config.json (GPT2LMHeadModel.from_pretrained loads it) and the
tokenizer: GPT-2's BPE as a transformers tokenizer, or megagpt's sentencepiece model as
`tokenizer.model` with a TOKENIZER.md saying how to use it (transformers has no loader for a
byte-fallback BPE without a dummy prefix). `from-hf` writes a megagpt model folder (see
megagpt/checkpoint.py) that every megagpt command accepts. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from megagpt.checkpoint import load_pretrained, save_model
from megagpt.model import GPT
from megagpt.tokenizer import GPT2Tokenizer, load_tokenizer

SENTENCEPIECE_NOTE = """# Tokenizer

This model was trained with megagpt's sentencepiece BPE (byte fallback, no dummy prefix, no
normalisation), kept here as `tokenizer.model`. transformers has no tokenizer class for it, so
tokenize with sentencepiece and pass the ids:

    import sentencepiece as spm, torch
    from transformers import GPT2LMHeadModel
    sp = spm.SentencePieceProcessor(model_file="tokenizer.model")
    model = GPT2LMHeadModel.from_pretrained(".")
    logits = model(torch.tensor([sp.encode("Hello world")])).logits

End of text is id {eos_id} (`<|endoftext|>`); config.json's bos/eos ids say the same.
"""


def to_hf(checkpoint: str | Path, out_dir: str | Path) -> Path:
    model, tokenizer, _ = load_pretrained(checkpoint, device="cpu")
    hf = model.to_hf()
    hf.config.bos_token_id = hf.config.eos_token_id = tokenizer.eos_id
    out = Path(out_dir)
    hf.save_pretrained(out)
    if isinstance(tokenizer, GPT2Tokenizer):
        from transformers import GPT2TokenizerFast

        hf_tok = GPT2TokenizerFast(vocab=str(tokenizer.encoder_file), merges=str(tokenizer.merges_file))
        hf_tok.save_pretrained(out)
        for src, name in tokenizer.files().items():  # also as OpenAI's names, for megagpt
            shutil.copyfile(src, out / name)
    else:
        for src, name in tokenizer.files().items():
            shutil.copyfile(src, out / name)
        (out / "TOKENIZER.md").write_text(SENTENCEPIECE_NOTE.format(eos_id=tokenizer.eos_id))
    return out


def from_hf(hf_dir: str | Path, out: str | Path) -> Path:
    from transformers import GPT2LMHeadModel

    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise FileNotFoundError(f"{hf_dir} has no config.json: pass a local save_pretrained folder")
    tokenizer = load_tokenizer(hf_dir)  # before the weights: fail fast on a folder without one
    hf = GPT2LMHeadModel.from_pretrained(hf_dir, local_files_only=True)
    model = GPT.from_hf(hf)
    save_model(Path(out), model.state_dict(), model.config, tokenizer)
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
    args = p.parse_args(argv)
    try:
        if args.command == "to-hf":
            out = to_hf(args.checkpoint, args.out_dir)
        else:
            out = from_hf(args.hf_dir, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"megagpt.convert: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
