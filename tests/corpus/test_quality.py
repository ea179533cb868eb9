"""GPT-3's quality filter: a classifier of the bundled articles against made-up boilerplate and spam
separates held-out documents; the Pareto rule keeps the share its formula says; a build scores,
keeps and counts, the same for the same seed."""

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest

from megagpt.formats.shards import read_shard
from megagpt.formats.tokenizer import Tokenizer
from pipelines import quality
from pipelines.build import _Build, build
from pipelines.build import main as build_main
from pipelines.build_settings import BuildSettings
from pipelines.clean import clean_text
from pipelines.dedup import text_digest
from pipelines.mpi import world
from pipelines.quality_model import QualityModel, keep, pareto_draw
from pipelines.sources import list_inputs
from pipelines.workarea import WorkArea
from tests.corpus.conftest import write_jsonl

NAV = ["Home", "About us", "Contact", "Privacy Policy", "Terms of Service", "Log in", "Sign up", "Cart",
       "FAQ", "Sitemap", "Careers", "Blog", "Shop", "Help", "Subscribe", "Cookie settings", "Next page"]
SPAM = ["buy cheap", "best price", "click here", "free shipping", "limited offer", "casino bonus",
        "replica watches", "online pharmacy", "lose weight fast", "earn money from home", "order now",
        "100% guaranteed", "discount code", "payday loans", "hot deals today", "act now"]


def junk(articles: list[str], count: int, seed: int) -> list[str]:
    """Raw-crawl stand-ins: navigation boilerplate, keyword spam, and word salad of the articles'
    own words (same vocabulary as the positives: only word order tells it apart)."""
    rng = random.Random(seed)
    vocabulary = [w for a in articles for w in a.split()]
    kinds = [
        lambda: " ".join(rng.choice(NAV) for _ in range(rng.randint(40, 120))),
        lambda: " ".join(f"{rng.choice(SPAM)} {rng.choice(vocabulary)}" for _ in range(rng.randint(40, 150))),
        lambda: " ".join(rng.choice(vocabulary) for _ in range(rng.randint(80, 400))),
    ]
    return [kinds[i % 3]() for i in range(count)]


@pytest.fixture(scope="module")
def prose(articles) -> list[str]:
    """The articles cleaned as a build cleans them (cleaning again changes nothing)."""
    return [t for t in map(clean_text, articles) if len(t) >= 200]


@pytest.fixture(scope="module")
def trained(prose, tmp_path_factory):
    """A model trained by the command on jsonl files, as a user trains one."""
    folder = tmp_path_factory.mktemp("quality")
    positive = write_jsonl(folder / "reference.jsonl", prose)
    negative = write_jsonl(folder / "crawl.jsonl", junk(prose, 240, seed=0))
    model = folder / "quality.npz"
    assert quality.main(["train", "--positive", str(positive), "--negative", str(negative),
                         "--output", str(model), "--bits", "16", "--valid-fraction", "0.3"]) == 0
    return model, json.loads(model.with_suffix(".json").read_text())


def pairwise_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """AUC by its definition, every pair compared: the reference for the rank formula."""
    greater = (positive[:, None] > negative[None, :]).mean()
    ties = (positive[:, None] == negative[None, :]).mean()
    return float(greater + ties / 2)


def test_classifier_separates_held_out_documents(prose, trained):
    path, report = trained
    held = report["validation"]
    assert held["positive"] >= 30 and held["negative"] >= 50
    assert held["auc"] >= 0.9, report
    model = QualityModel.load(path)
    assert model.info["validation"] == held and model.bits == 16 and model.ngrams == (1, 2)
    # the held-out documents scored again from the saved file: the same AUC by the pairwise definition
    negatives = junk(prose, 240, seed=0)
    texts = prose + negatives  # as the command read them: already clean
    labels = np.array([1] * len(prose) + [0] * len(negatives))
    side = np.array([quality.is_validation(t, 0.3, 0) for t in texts])
    scores = model.score(texts)
    prose_scores, junk_scores = scores[side & (labels == 1)], scores[side & (labels == 0)]
    assert pairwise_auc(prose_scores, junk_scores) == pytest.approx(held["auc"])
    # documents never seen in training: fresh junk against the articles
    fresh = model.score(junk(prose, 150, seed=1))
    assert pairwise_auc(prose_scores, fresh) >= 0.9


def test_rank_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, 300).astype(float)  # many ties
    labels = rng.integers(0, 2, 300)
    reference = pairwise_auc(scores[labels == 1], scores[labels == 0])
    assert quality.roc_auc(labels, scores) == pytest.approx(reference)


@pytest.mark.parametrize("score", [0.0, 0.5, 0.8, 0.95])
def test_pareto_rule_keeps_the_share_the_formula_predicts(score):
    """numpy's pareto is Lomax: P(X > x) = (1 + x)^-a, so P(X > 1 - s) = (2 - s)^-a."""
    n, alpha = 5000, 9.0
    digests = np.random.default_rng(1).integers(0, 256, (n, 16), dtype=np.uint8)
    kept = keep(np.full(n, score), digests, seed=3, alpha=alpha).mean()
    expected = (2 - score) ** -alpha
    assert abs(kept - expected) <= 5 * np.sqrt(expected * (1 - expected) / n) + 1 / n


def test_pareto_draw_depends_on_seed_and_text_only():
    digest = text_digest("some document")
    assert pareto_draw(digest, 0, 9.0) == pareto_draw(digest, 0, 9.0)
    assert pareto_draw(digest, 0, 9.0) != pareto_draw(digest, 1, 9.0)
    assert pareto_draw(digest, 0, 9.0) != pareto_draw(text_digest("another"), 0, 9.0)
    scores = np.array([0.1, 0.5, 0.7, 0.9])
    kept = keep(scores, np.zeros((4, 16), np.uint8), 0, 9.0, threshold=0.7)
    assert kept.tolist() == [False, False, True, True]


def _shard_metas(folder) -> list[dict]:
    manifest = json.loads((folder / "manifest.json").read_text())
    return [meta for s in manifest["shards"] for _, _, meta in read_shard(folder / s["name"])]


@pytest.fixture(scope="module")
def raw(prose, tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw")
    return write_jsonl(folder / "docs.jsonl", prose[:80] + junk(prose, 60, seed=2))


@pytest.fixture(scope="module")
def tokenizer(prose, tmp_path_factory) -> str:
    """One tokenizer for every build here (a build that trains its own spends a second on it)."""
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
    Tokenizer.train(prose[:80], path, 600)
    return str(path)


def test_build_with_quality_scores_keeps_and_counts(raw, trained, tokenizer, tmp_path):
    model_path, _ = trained
    model = QualityModel.load(model_path)
    options = dict(tokenizer=tokenizer, valid_fraction=0.0, seed=5, quality=str(model_path), workers=1)
    manifest = build([raw], tmp_path / "a", **options)
    stage = manifest["stages"]["quality"]
    assert stage["in"] == manifest["stages"]["near_dedup"]["out"] == 140
    assert stage["out"] == manifest["stages"]["decontaminate"]["in"] == manifest["documents"]
    # the same decisions made by hand from the texts: score, then GPT-3's rule with the build's seed
    texts = [json.loads(line)["text"] for line in raw.read_text().splitlines()]  # clean already
    scores = model.score(texts).astype(np.float32)  # a build keeps the scores as float32
    digests = np.frombuffer(b"".join(text_digest(t) for t in texts), np.uint8).reshape(-1, 16)
    kept = keep(scores, digests, 5, 9.0)
    assert stage["dropped"] == ({"low_quality": int((~kept).sum())} if (~kept).any() else {})
    assert stage["out"] == int(kept.sum()) and 0 < kept.sum() < 140
    assert kept[80:].sum() <= 3 < kept[:80].sum()  # junk almost never survives; some prose always
    metas = _shard_metas(tmp_path / "a")
    assert sorted(m["quality"] for m in metas) == pytest.approx(sorted(scores[kept].tolist()), abs=1e-6)
    assert manifest["settings"]["quality"]["model"] == str(model_path)
    # the same seed, the same corpus; a threshold instead of the draw keeps exactly score >= X
    again = build([raw], tmp_path / "b", **options)
    assert again["stages"] == manifest["stages"] and _shard_metas(tmp_path / "b") == metas
    strict = build([raw], tmp_path / "c", **options, quality_threshold=0.5)
    assert strict["stages"]["quality"]["out"] == int((scores >= 0.5).sum())


def test_a_continued_build_redoes_what_the_quality_settings_touch(raw, trained, tokenizer, tmp_path):
    """A new alpha redoes the decide step, not the map step (the scores stay); a model retrained at
    the same path redoes the map step; the continued build equals a fresh one."""
    model = tmp_path / "model.npz"
    model.write_bytes(trained[0].read_bytes())
    output = tmp_path / "out"
    area, files = WorkArea(Path(f"{output}.build")), list_inputs([raw])
    first = BuildSettings(tokenizer=tokenizer, valid_fraction=0.0, seed=5, quality=str(model))

    def steps_up_to_decide(settings: BuildSettings) -> None:
        run = _Build(settings, files, area, world(), 1)
        run.start()
        run.map_chunks()
        run.decide_duplicates()
        run.decide_documents()

    steps_up_to_decide(first)
    scores = area.file("map", 0, "docs.npz").read_bytes()
    lower = dataclasses.replace(first, quality_alpha=2.0)
    _Build(lower, files, area, world(), 1).start()
    assert area.done("map", 0) and not area.done("decide", 0)
    continued = build([raw], output, lower, workers=1)
    assert not area.root.exists() and continued["stages"]["quality"]["out"] > 0
    fresh = build([raw], tmp_path / "fresh", lower, workers=1)
    assert continued["stages"] == fresh["stages"] and _shard_metas(output) == _shard_metas(tmp_path / "fresh")
    steps_up_to_decide(lower)
    retrained = QualityModel.load(model)
    dataclasses.replace(retrained, bias=retrained.bias + 1.0).save(model)
    _Build(lower, files, area, world(), 1).start()
    assert not area.done("map", 0)
    steps_up_to_decide(lower)
    assert area.file("map", 0, "docs.npz").read_bytes() != scores


def test_build_refuses_a_missing_or_foreign_model(raw, tmp_path, capsys):
    args = ["--input", str(raw), "--train-tokenizer", "--vocab-size", "300"]
    missing = tmp_path / "nowhere.npz"
    assert build_main([*args, "--output", str(tmp_path / "o"), "--quality", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"--quality {missing} does not exist" in err and "python -m pipelines.quality train" in err
    foreign = tmp_path / "foreign.npz"
    foreign.write_bytes(b"not a model")
    assert build_main([*args, "--output", str(tmp_path / "o"), "--quality", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert f"--quality {foreign} is not a quality model" in err and "python -m pipelines.quality train" in err
    assert build_main([*args, "--output", str(tmp_path / "o"), "--quality-threshold", "0.5"]) == 2
    assert "--quality-threshold needs --quality MODEL" in capsys.readouterr().err
