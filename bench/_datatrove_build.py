"""datatrove's closest equivalent of megagpt's JSON-lines build, in one process: build_memory's contender.

    python -m bench._datatrove_build --input CORPUS.jsonl --output DIR --tokenizer TOKENIZER.json
    python -m bench._datatrove_build --convert TOK.model --tokenizer TOKENIZER.json   # make the tokenizer

Not a benchmark of its own (bench/build_memory.py runs it as a measured subprocess, the way it runs
`python -m pipelines.build --workers 1`); it is datatrove 0.10's own steps, each stage a
LocalPipelineExecutor of one worker (tasks run one after another in this process), as datatrove's
examples chain them (examples/minhash_deduplication.py, examples/fineweb.py):

1. JsonlReader -> FTFYFormatter -> LambdaFilter -> JsonlWriter (uncompressed, to the work folder)
2. JsonlReader of that -> MinhashDedupSignature
3. MinhashDedupBuckets (its 14 bucket tasks)
4. MinhashDedupCluster
5. JsonlReader of step 1's output -> MinhashDedupFilter -> DocumentTokenizer (token files in DIR)

What is the same as megagpt's build: the input, unicode repair by ftfy with megagpt's settings (ftfy's
defaults and NFC; FTFYFormatter's own defaults are gentler: no NFC, and curly quotes, ligatures, wide
characters and line breaks kept), the filter (a LambdaFilter with megagpt's rules: at least 200
characters, letters at least 60% of the non-space characters, no wikipedia.org URL), MinHash near
dedup of word 5-grams at about Jaccard 0.8, and tokenizing every kept document with the same BPE
into token files.

What differs: datatrove's MinHash is its default (14 bands x 8 of 112 hashes of 5-grams of its English
word tokenizer's words, no verification of candidates; megagpt: 128 values, verified); no exact-dedup
stage (an exact copy is a near duplicate at Jaccard 1, so MinHash removes it too, but megagpt's exact
dedup by text hash is work datatrove does not do here); no whitespace normalisation after ftfy and no
train/valid split (megagpt does both; both cheap); DocumentTokenizer does not shuffle documents (its
default does; megagpt does not) and writes one token file and its index, not shards and a manifest.
The tokenizer is megagpt's: the sentencepiece model bench/corpus_scale.bench_tokenizer trains on the
bundled pages, converted to a Hugging Face `tokenizers` file (`--convert`: its vocabulary and merges
read by transformers' SentencePieceExtractor, byte fallback, "▁" for spaces, digits split, the
end-of-text and newline pieces as added tokens), since DocumentTokenizer takes only `tokenizers`
files and nothing may be downloaded; on the 181 bundled pages it gives the same ids as sentencepiece
for 179 and 0.02% more tokens in all (the same end-of-text id). Tokenizing runs on one thread
(TOKENIZERS_PARALLELISM=false), as megagpt's --workers 1 build is one process.

How it runs: the executor starts a multiprocess Manager for each stage, a fork of this process (its
resident memory counts the pages it shares with it: build_memory's "child MiB"). datatrove's logs
go to DIR.log (kept, and its end printed, only on failure) and DIR.work/logs; the work folder is
removed at the end. DIR/summary.json gets the documents read, filtered and kept, the tokens, and
datatrove's own timing of each step (wall seconds; most of it is MinHash stage 1, signatures of
spaCy-tokenized words). Its peak memory is DocumentTokenizer's: it encodes 10,000 documents a batch
(its default, kept), so up to 40 MB of WebText-like text it holds the encodings of every document
at once. Needs datatrove, spacy and orjson (the bench's environment only).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import traceback
from pathlib import Path
from urllib.parse import urlsplit

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core, as megagpt's --workers 1

MIN_CHARS, MIN_ALPHA, BLOCKED = 200, 0.6, ("wikipedia.org",)  # megagpt's defaults (pipelines/filters.py)
_SPACE = re.compile(r"\s")
_NOT_LETTER = re.compile(r"[\W\d_]")
EOS = "<|endoftext|>"


def keep(document) -> bool:
    """megagpt's filter rules, for datatrove's LambdaFilter (True: keep)."""
    text = document.text
    if len(text) < MIN_CHARS:
        return False
    visible = len(text) - len(_SPACE.findall(text))
    if len(text) - len(_NOT_LETTER.findall(text)) < MIN_ALPHA * visible:
        return False
    url = document.metadata.get("url")
    host = (urlsplit(url if "//" in url else f"//{url}").hostname or "").lower().rstrip(".") if url else ""
    return not any(host == d or host.endswith("." + d) for d in BLOCKED)


def convert(model: Path, out: Path) -> Path:
    """A Hugging Face `tokenizers` file of the sentencepiece BPE `model` (see the docstring)."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    spm = SentencePieceExtractor(str(model)).extract(BPE)
    tokenizer = HFTokenizer(BPE(spm["vocab"], spm["merges"], unk_token="<unk>", fuse_unk=True,
                                byte_fallback=True))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("▁*[^▁]*"), behavior="isolated"),  # a word with the spaces before it
        pre_tokenizers.Digits(individual_digits=True)])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                           decoders.Fuse()])
    tokenizer.add_tokens(spm["additional_special_tokens"])  # <|endoftext|> and "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out))
    return out


def _xxhash64(text: str) -> int:
    """datatrove 0.10 hashes str with xxhash, which takes bytes since xxhash 4 (3 encoded UTF-8 itself)."""
    import xxhash

    return xxhash.xxh64_intdigest(text.encode())


def _plain(name: str) -> str:
    """A datatrove step's name without its emoji: "📖 - READER: 🐿 Jsonl" -> "READER: Jsonl"."""
    return " ".join(name.encode("ascii", "ignore").decode().strip(" -").split())


def build(corpus: Path, output: Path, tokenizer: Path) -> dict:
    """Run the five stages; the documents and tokens that reach the token files."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import LambdaFilter
    from datatrove.pipeline.formatters import FTFYFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers import JsonlWriter

    work = output.with_name(output.name + ".work")
    config = MinhashConfig()
    signer = MinhashDedupSignature(output_folder=str(work / "signatures"), config=config)
    signer._hash_func = _xxhash64

    steps = []  # every step's datatrove stats, stage by stage

    def stage(name: str, pipeline: list, tasks: int = 1) -> None:
        stats = LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1,
                                      logging_dir=str(work / "logs" / name)).run()
        steps.extend((name, step) for step in stats.stats)

    stage("clean", [
        JsonlReader(str(corpus.parent), glob_pattern=corpus.name),
        FTFYFormatter(fix_latin_ligatures=True, fix_character_width=True, uncurl_quotes=True,
                      fix_line_breaks=True, normalization="NFC"),  # ftfy's defaults, as megagpt
        LambdaFilter(keep),
        JsonlWriter(str(work / "clean"), compression=None)])
    stage("signatures", [JsonlReader(str(work / "clean")), signer])
    stage("buckets", [MinhashDedupBuckets(input_folder=str(work / "signatures"),
                                          output_folder=str(work / "buckets"), config=config)],
          tasks=config.num_buckets)
    stage("cluster", [MinhashDedupCluster(input_folder=str(work / "buckets"),
                                          output_folder=str(work / "remove_ids"), config=config)])
    stage("tokenize", [
        JsonlReader(str(work / "clean")),
        MinhashDedupFilter(input_folder=str(work / "remove_ids")),
        DocumentTokenizer(output_folder=str(output), tokenizer_name_or_path=str(tokenizer), eos_token=EOS,
                          shuffle_documents=False)])
    counts = {_plain(step.name): {k: v.total for k, v in step.stats.items()} for _, step in steps}
    filtered, deduped, tokenized = (next(v for k, v in counts.items() if name in k)
                                    for name in ("Lambda", "MinHash stage 4", "TOKENIZER"))
    summary = {"input_documents": int(filtered["total"]), "filtered": int(filtered.get("forwarded", 0)),
               "documents": int(deduped.get("forwarded", 0)), "tokens": int(tokenized["tokens"]),
               "step_seconds": {f"{s}: {_plain(step.name)}": round(step.time_stats.total, 2)
                                for s, step in steps}}  # datatrove's timing of each step (wall)
    (output / "summary.json").write_text(json.dumps(summary) + "\n")
    shutil.rmtree(work)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, help="a JSON-lines corpus (text, url)")
    parser.add_argument("--output", type=Path, help="the folder of token files")
    parser.add_argument("--tokenizer", type=Path, required=True, help="a `tokenizers` file (see --convert)")
    parser.add_argument("--convert", type=Path, metavar="MODEL",
                        help="write --tokenizer from this sentencepiece model, and build nothing")
    args = parser.parse_args()
    if args.convert:
        convert(args.convert, args.tokenizer)
        return
    if not (args.input and args.output):
        parser.error("give --input and --output (or --convert)")
    log = args.output.with_name(args.output.name + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as sink:  # datatrove logs every task to stderr: into a file, not the measuring pipe
        os.dup2(sink.fileno(), 2)
        try:
            summary = build(args.input, args.output, args.tokenizer)
        except Exception:
            sys.stdout.write(log.read_text()[-4000:])  # what the caller shows of a failure
            traceback.print_exc(file=sys.stdout)
            sys.exit(1)
    log.unlink()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
