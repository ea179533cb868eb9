"""Hugging Face interop: export a checkpoint as a `transformers` GPT-2 folder, import one back.

    python -m megagpt.convert to-hf runs/demo hf/demo          # any checkpoint or model folder
    python -m megagpt.convert from-hf hf/demo models/demo      # a local save_pretrained folder

`to-hf` writes model.safetensors + config.json (GPT2LMHeadModel.from_pretrained loads it) and the
tokenizer as `AutoTokenizer` loads it (GPT-2's BPE, or megagpt's sentencepiece BPE rebuilt as a
`tokenizers` pipeline giving the same ids), so the folder is all `lm_eval --model hf` needs; its
tokenizer_config.json names a class transformers 4.x and 5.x both load and the context as
`model_max_length`. `from-hf` writes a megagpt model folder (see megagpt.checkpoint.pretrained)
that every megagpt command accepts; it refuses, with the reason, the GPT-2 variants megagpt's model
is not (untied output layer, another LayerNorm eps or MLP width, other attention scaling), and
reads the tokenizer from vocab.json + merges.txt or, as transformers 5 saves it, tokenizer.json.
Nothing is downloaded. Both refuse an output folder that is not empty unless given --force,
and write into a temporary sibling that replaces it only once complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from megagpt.checkpoint import load_pretrained, replacing_folder, save_model
from megagpt.formats.tokenizer import GPT2_FILES, AnyTokenizer, GPT2Tokenizer, Tokenizer, load_tokenizer
from megagpt.model.gpt import GPT

if TYPE_CHECKING:
    from transformers import GPT2Config, PreTrainedTokenizerFast

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
    context = model.config.block_size
    if isinstance(tokenizer, GPT2Tokenizer):
        from transformers import GPT2TokenizerFast

        hf_tok = GPT2TokenizerFast(vocab=str(tokenizer.encoder_file), merges=str(tokenizer.merges_file),
                                   model_max_length=context)
        hf_tok.save_pretrained(out)
        shutil.copyfile(tokenizer.encoder_file, out / "vocab.json")  # for transformers 4.x's slow class
        shutil.copyfile(tokenizer.merges_file, out / "merges.txt")
        _name_tokenizer_class(out, "GPT2TokenizerFast", context)
    else:
        hf_tok = sentencepiece_to_hf(tokenizer)
        hf_tok.model_max_length = context
        hf_tok.save_pretrained(out)
        _name_tokenizer_class(out, "PreTrainedTokenizerFast", context)
    for src, name in tokenizer.files().items():  # as megagpt names them: it reads these itself
        shutil.copyfile(src, out / name)


def _name_tokenizer_class(out: Path, name: str, context: int) -> None:
    """tokenizer_config.json naming a class that transformers 4.x and 5.x both have: 5.x writes
    its own `TokenizersBackend`, which 4.x's AutoTokenizer cannot find. `model_max_length` is the
    context, so that truncation and lm_eval's windows stop where the model does."""
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.update(tokenizer_class=name, model_max_length=context)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def from_hf(hf_dir: str | Path, out: str | Path, force: bool = False) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise FileNotFoundError(f"{hf_dir} has no config.json: pass a local save_pretrained folder")
    unsupported = unsupported_features(GPT2Config.from_pretrained(hf_dir, local_files_only=True))
    if unsupported:
        raise ValueError(f"{hf_dir / 'config.json'} describes a model megagpt's GPT-2 is not (tied "
                         "embeddings, LayerNorm eps 1e-5, a 4 x n_embd MLP, attention scaled by "
                         "1/sqrt(head size) only); importing it would change its outputs: "
                         + "; ".join(unsupported))
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = _hf_tokenizer(hf_dir, Path(scratch))  # before the weights: fail fast
        with replacing_folder(Path(out), force) as tmp:
            hf = GPT2LMHeadModel.from_pretrained(hf_dir, local_files_only=True)
            model = GPT.from_hf(hf)
            save_model(tmp, model.state_dict(), model.config, tokenizer)
    return Path(out)


def unsupported_features(config: GPT2Config) -> list[str]:
    """What of a transformers GPT-2 config megagpt's model cannot reproduce, one reason each.
    (`reorder_and_upcast_attn` only reorders and upcasts the same product: imported as it is.)"""
    reasons = []
    if config.model_type != "gpt2":
        reasons.append(f"model_type is {config.model_type!r}, not 'gpt2'")
    if not config.tie_word_embeddings:
        reasons.append("tie_word_embeddings is false: its output layer is not its embedding, "
                       "megagpt's always is")
    if config.layer_norm_epsilon != 1e-5:
        reasons.append(f"layer_norm_epsilon is {config.layer_norm_epsilon:g}, megagpt's is 1e-05")
    if config.scale_attn_by_inverse_layer_idx:
        reasons.append("scale_attn_by_inverse_layer_idx is true: layer i's attention is scaled by 1/(i+1)")
    if not config.scale_attn_weights:
        reasons.append("scale_attn_weights is false: its attention is not scaled by 1/sqrt(head size)")
    if config.n_inner not in (None, 4 * config.n_embd):
        reasons.append(f"n_inner is {config.n_inner}: megagpt's MLP is 4 x n_embd = {4 * config.n_embd}")
    return reasons


def _hf_tokenizer(hf_dir: Path, scratch: Path) -> AnyTokenizer:
    """The folder's tokenizer: sentencepiece, GPT-2's vocab.json + merges.txt, or, as transformers
    5 saves it, only tokenizer.json (GPT-2's byte-level BPE: written out as encoder.json + vocab.bpe
    in `scratch`)."""
    try:
        return load_tokenizer(hf_dir)
    except FileNotFoundError:
        if not (hf_dir / "tokenizer.json").is_file():
            raise
    encoder, merges = gpt2_files_from_tokenizer_json(hf_dir / "tokenizer.json")
    (scratch / GPT2_FILES[0]).write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    (scratch / GPT2_FILES[1]).write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                         encoding="utf-8")
    return load_tokenizer(scratch)


def gpt2_files_from_tokenizer_json(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2's encoder (piece -> id, added tokens included) and merges, best first, from a
    `tokenizers` tokenizer.json; ValueError if it does not hold a byte-level BPE."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model, pre = data["model"], json.dumps(data.get("pre_tokenizer"))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a tokenizers tokenizer.json ({err})") from None
    if model.get("type") != "BPE" or '"ByteLevel"' not in pre:
        raise ValueError(f"{path} holds a {model.get('type')} model with pre-tokenizer {pre[:80]}; megagpt "
                         "reads GPT-2's byte-level BPE or a sentencepiece tokenizer.model")
    encoder = dict(model["vocab"])
    encoder.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    if any(len(m) != 2 for m in merges):
        raise ValueError(f"{path}: model.merges are not pairs of pieces")
    return encoder, merges


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

