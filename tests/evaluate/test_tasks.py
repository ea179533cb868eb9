"""Evaluation tasks on real text: losses equal transformers', scores equal brute force, files and
few-shot prompts are what the papers describe. Small subsets of the bundled LAMBADA / WikiText-2."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import GPT2Config, GPT2LMHeadModel

from megagpt import checkpoint
from megagpt.checkpoint import huggingface as convert
from megagpt.formats.tokenizer import Tokenizer
from megagpt.tasks import evaluate
from megagpt.tasks.generate import generate

ROOT = Path(__file__).resolve().parents[2]
WIKI = ROOT / "data/eval/wikitext-2-raw/wiki.test.raw"
LAMBADA = ROOT / "data/eval/lambada/lambada_test.jsonl"


def wiki_subset(tmp_path: Path, lines: int = 40) -> Path:
    path = tmp_path / "wiki.raw"
    path.write_text("".join(WIKI.read_text().splitlines(keepends=True)[:lines]))
    return path


def test_token_losses_equal_transformers_on_wikitext(corpus, tmp_path):
    """A random-weight HF GPT-2 imported through megagpt.convert: megagpt's sliding-window NLLs equal
    the ones transformers gives for the same ids with Hugging Face's documented perplexity recipe."""
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=512, n_positions=64)).eval()
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.model").write_bytes((corpus / "tokenizer.model").read_bytes())
    assert convert.main(["from-hf", str(tmp_path / "hf"), str(tmp_path / "model")]) == 0
    model, tokenizer, _ = checkpoint.load_pretrained(tmp_path / "model", device="cpu")

    ids = tokenizer.encode(evaluate.wikitext_detokenize(wiki_subset(tmp_path, 12).read_text()))
    assert len(ids) > 300
    ours = evaluate.token_nlls(model, ids, stride=24, progress=False)

    # transformers' recipe: windows of max_length tokens every stride tokens, scoring (labels not
    # -100) only what no earlier window scored. Here max_length = n_positions + 1: the window's
    # last token is only a target, so the model sees n_positions inputs, as megagpt's window does.
    expected, prev_end = [], 0
    with torch.no_grad():
        for begin in range(0, len(ids), 24):
            end = min(begin + 65, len(ids))
            x = torch.tensor([ids[begin:end]])
            nll = F.cross_entropy(hf(x[:, :-1]).logits[0], x[0, 1:], reduction="none")
            expected.append(nll[len(nll) - (end - max(prev_end, begin + 1)):])
            prev_end = end
            if end == len(ids):
                break
    expected = torch.cat(expected)
    assert ours.shape == expected.shape == (len(ids) - 1,)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_wikitext_detokenizer_undoes_the_artefacts():
    raw = ' = = Career = = \n He earned 1 @,@ 000 dollars ( in 2004 ) , a " record " ; 3 @.@ 5 @-@ fold .\n'
    assert evaluate.wikitext_detokenize(raw) == (
        ' == Career ==\nHe earned 1,000 dollars (in 2004), a "record"; 3.5-fold .\n'
    )


@pytest.mark.slow  # trained_run: train.py, 2 ranks, 300 steps
def test_wikitext2_reports_token_and_word_perplexity(trained_run, tmp_path):
    model, tokenizer, _ = checkpoint.load_pretrained(trained_run, device="cpu")
    path = wiki_subset(tmp_path, 20)
    r = evaluate.run_task(model, tokenizer, "wikitext2", path, stride=16, progress=False)
    raw = path.read_text()
    assert r["words"] == len(raw.split()) + 20
    assert evaluate.wikitext_words(WIKI)[1] == 245_569  # the published count, for the bundled file
    assert r["tokens"] == len(tokenizer.encode(evaluate.wikitext_detokenize(raw)))
    assert r["token_ppl"] == pytest.approx(math.exp(r["nll_sum"] / r["tokens"]))
    assert r["word_ppl"] == pytest.approx(math.exp(r["nll_sum"] / r["words"]))
    # The trained model beats uniform guessing over its 512 tokens on Wikipedia text it never saw.
    assert r["token_ppl"] < 512 / 2


@pytest.mark.slow  # trained_run: train.py, 2 ranks, 300 steps
def test_lambada_greedy_flags_agree_with_generation(trained_run):
    model, tokenizer, _ = checkpoint.load_pretrained(trained_run, device="cpu")
    texts = [json.loads(line)["text"] for line in LAMBADA.read_text().splitlines()[:30]]
    examples = []
    for text in texts:
        context, word = evaluate.lambada_split(text)
        assert text == context + word and " " not in word[1:]
        examples.append(evaluate.Example(tokenizer.encode(context), tokenizer.encode(word)))
    # The trained model's own greedy continuations as targets: all must count as hits.
    own = [evaluate.Example(ex.context, generate(model, [ex.context[-31:]], 2, temperature=0)[0])
           for ex in examples[:10]]
    assert all(hit for _, hit in evaluate.score(model, own, progress=False))
    results = evaluate.score(model, examples, progress=False)
    with torch.no_grad():  # brute force, one example at a time, without batching or padding
        for ex, (ll, hit) in zip(examples, results):
            seq = torch.tensor([(ex.context + ex.continuation)[-33:]])
            logprobs = model(seq[:, :-1])[0][0].log_softmax(-1)[-len(ex.continuation):]
            target = seq[0, -len(ex.continuation):]
            assert ll == pytest.approx(logprobs.gather(1, target[:, None]).sum().item(), abs=1e-4)
            assert hit == bool((logprobs.argmax(-1) == target).all())
    r = evaluate.run_task(model, tokenizer, "lambada", LAMBADA, limit=30, progress=False)
    assert r["examples"] == 30
    assert r["acc"] == sum(h for _, h in results) / 30
    assert r["ppl"] == pytest.approx(math.exp(-sum(ll for ll, _ in results) / 30), rel=1e-6)


def lambada_choice_file(path: Path, lines: range) -> Path:
    """Multiple choice from LAMBADA: the true last word against 3 last words of other passages."""
    texts = [json.loads(line)["text"] for line in LAMBADA.read_text().splitlines()[:200]]
    rng = random.Random(0)
    rows = []
    for i in lines:
        context, word = evaluate.lambada_split(texts[i])
        others = [evaluate.lambada_split(t)[1] for t in rng.sample(texts[:i] + texts[i + 1 :], 3)]
        label = rng.randrange(4)
        choices = others[:label] + [word] + others[label:]
        rows.append({"context": context, "choices": [c.strip() for c in choices], "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow  # trained_run: train.py, 2 ranks, 300 steps
def test_choice_and_few_shot_prompts(trained_run, tmp_path):
    model, tokenizer, _ = checkpoint.load_pretrained(trained_run, device="cpu")
    test = lambada_choice_file(tmp_path / "test.jsonl", range(12))
    train = lambada_choice_file(tmp_path / "train.jsonl", range(100, 120))
    r = evaluate.run_task(model, tokenizer, "choice", test, progress=False)
    assert r["examples"] == 12 and 0 <= r["acc"] <= 1 and 0 <= r["acc_norm"] <= 1

    solved = evaluate.train_examples("choice", train)
    row = json.loads(train.read_text().splitlines()[0])
    assert solved[0] == f"{row['context']} {row['choices'][row['label']]}"
    prefix = evaluate.few_shot_prefix(2, solved, random.Random(0))
    assert any(prefix == f"{a}\n\n{b}\n\n" for a in solved for b in solved if a != b)
    shot = evaluate.run_task(model, tokenizer, "choice", test, shots=2, train_file=train, progress=False)
    assert shot["examples"] == 12
    with pytest.raises(ValueError, match="needs --train-file"):
        evaluate.run_task(model, tokenizer, "lambada", shots=1)
    with pytest.raises(ValueError, match="needs --file"):
        evaluate.run_task(model, tokenizer, "choice")


def test_bad_choice_file_names_the_file_and_the_format(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "a", "choices": ["b"]}\n')
    tok = Tokenizer  # not reached: the file is read before any scoring
    with pytest.raises(ValueError, match=r"bad.jsonl: every line needs 'context', 'choices'"):
        evaluate.run_task(torch.nn.Linear(1, 1), tok, "choice", bad)


@pytest.mark.slow  # trained_run: train.py, 2 ranks, 300 steps
def test_command_writes_json_and_tensorboard(trained_run, tmp_path, capsys):
    out = tmp_path / "lambada.json"
    assert evaluate.main(["--checkpoint", str(trained_run), "--task", "lambada", "--limit", "8",
                          "--json", str(out), "--tb", str(tmp_path / "tb")]) == 0
    result = json.loads(out.read_text())
    assert result["task"] == "lambada" and result["examples"] == 8
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    (point,) = events.Scalars("eval/lambada_acc")
    assert point.step == 300 and point.value == pytest.approx(result["acc"])
    assert evaluate.main(["--checkpoint", str(tmp_path / "none"), "--task", "lambada"]) == 2
    assert "does not exist" in capsys.readouterr().err
