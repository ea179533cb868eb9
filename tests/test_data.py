"""The shard reader: deterministic windows, rank slices that add up to the global batch, exact resume."""

import io
import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from megagpt.formats.shards import MANIFEST_NAME, ShardError, ShardWriter, write_manifest
from megagpt.training.data import DataState, MixtureDataset, RankBatches, ShardDataset, _endless, open_dataset

EOS = 1
BLOCK = 16


def write_corpus(folder: Path, n_docs: int = 60, max_shard_tokens: int = 400, seed: int = 0,
                 low: int = 2, tokenizer_sha: str = "0" * 64) -> list:
    """Documents of random lengths (each ending in EOS, tokens from `low` up), spread over several shards."""
    rng = np.random.default_rng(seed)
    docs = [np.append(rng.integers(low, low + 498, rng.integers(5, 80)), EOS).astype(np.uint16)
            for _ in range(n_docs)]
    with ShardWriter(folder, vocab_size=512, max_shard_tokens=max_shard_tokens) as writer:
        for i, doc in enumerate(docs):
            writer.write(f"doc{i:04d}", doc, {"source": "synthetic"})
    (folder / "tokenizer.model").write_bytes(b"not used by the reader")
    write_manifest(folder, {
        "format": "megagpt-shards/1",
        # a vocabulary holding every id written (the reader refuses ids past it)
        "tokenizer": {"file": "tokenizer.model", "sha256": tokenizer_sha, "vocab_size": 2048, "eos_id": EOS},
        "dtype": "uint16", "documents": len(docs), "tokens": int(sum(map(len, docs))),
        "shards": writer.shards, "stages": {},
    })
    return docs


@pytest.fixture
def corpus(tmp_path):
    docs = write_corpus(tmp_path)
    return ShardDataset(tmp_path, BLOCK, seed=7), docs


def test_windows_cover_every_document_once_per_epoch(corpus):
    dataset, docs = corpus
    assert len(dataset.shards) > 3
    windows = list(dataset.iter_windows(epoch=0))
    assert len(windows) == dataset.windows_per_epoch == (sum(map(len, docs)) - 1) // BLOCK
    assert all(len(w) == BLOCK + 1 for w in windows)
    assert all(a[-1] == b[0] for a, b in zip(windows, windows[1:]))  # stride BLOCK, 1 token shared
    stream = np.concatenate([windows[0]] + [w[1:] for w in windows[1:]])
    ends = np.flatnonzero(stream == EOS)
    seen = [tuple(d) for d in np.split(stream[: ends[-1] + 1], ends[:-1] + 1)]
    expected = [tuple(d) for d in docs]
    assert len(seen) >= len(docs) - 2  # at most the tail past the last full window is missing
    assert sorted(seen) == sorted(set(seen)) and set(seen) <= set(expected)


def test_epochs_are_shuffled_differently_and_reproducibly(corpus):
    dataset, _ = corpus
    first = np.stack(list(dataset.iter_windows(0)))
    assert np.array_equal(first, np.stack(list(dataset.iter_windows(0))))
    assert not np.array_equal(first, np.stack(list(dataset.iter_windows(1))[: len(first)]))


@pytest.mark.parametrize("start", [0, 1, 5, 23, 24, 25, 40])
def test_windows_resume_mid_stream_without_replay(corpus, start):
    dataset, _ = corpus
    full = list(dataset.iter_windows(0))
    resumed = list(dataset.iter_windows(0, start=start))
    assert len(resumed) == len(full) - start
    assert all(np.array_equal(a, b) for a, b in zip(resumed, full[start:]))


def test_rank_slices_make_up_the_single_process_batch(corpus):
    dataset, _ = corpus
    single = RankBatches(dataset, micro_batch=4, dp_rank=0, dp_size=1)
    ranks = [RankBatches(dataset, micro_batch=2, dp_rank=r, dp_size=2) for r in range(2)]
    for _ in range(dataset.windows_per_epoch // 4 + 3):  # crosses into the next epoch
        x, y = next(single)
        parts = [next(r) for r in ranks]
        assert np.array_equal(x, np.concatenate([p[0] for p in parts]))
        assert np.array_equal(y, np.concatenate([p[1] for p in parts]))
        assert np.array_equal(x[:, 1:], y[:, :-1])
    assert single.state.epoch == 1 and single.state == ranks[0].state == ranks[1].state


def test_saved_position_restores_the_same_batches(corpus):
    dataset, _ = corpus
    batches = RankBatches(dataset, micro_batch=2, dp_rank=1, dp_size=2)
    for _ in range(9):
        next(batches)
    saved = DataState(**batches.state.to_dict())
    expected = [next(batches) for _ in range(12)]
    restored = RankBatches(dataset, micro_batch=2, dp_rank=1, dp_size=2, state=saved)
    for (x, y), (rx, ry) in zip(expected, (next(restored) for _ in range(12))):
        assert np.array_equal(x, rx) and np.array_equal(y, ry)


def test_corpus_smaller_than_a_global_batch_is_refused(tmp_path):
    write_corpus(tmp_path, n_docs=2)
    with pytest.raises(ValueError, match="fewer than one global micro-batch"):
        RankBatches(ShardDataset(tmp_path, BLOCK, seed=0), micro_batch=8, dp_rank=0, dp_size=2)


def test_shards_are_the_tars_tarfile_writes(tmp_path):
    """ShardWriter packs its own USTAR headers: the bytes equal tarfile's for the same members
    (mode 0444, mtime 0), with a name too long for one USTAR field and non-ASCII meta too."""
    docs = [("a" * 32, [1, 2, 3], {"url": "https://example.com/caf\u00e9"}),
            ("part/" * 25 + "k", list(range(700)), {"source": "x.jsonl", "url": None}), ("e", [], {})]
    with ShardWriter(tmp_path, vocab_size=512) as writer:
        for key, tokens, meta in docs:
            writer.write(key, np.array(tokens), meta)
    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, tokens, meta in docs:
            npy = io.BytesIO()
            np.save(npy, np.array(tokens, np.uint16), allow_pickle=False)
            for name, data in ((f"{key}.tokens.npy", npy.getvalue()),
                               (f"{key}.meta.json", json.dumps(meta, ensure_ascii=False).encode())):
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o444
                tar.addfile(info, io.BytesIO(data))
    assert (tmp_path / writer.shards[0]["name"]).read_bytes() == expected.getvalue()


def test_truncated_shard_is_named(tmp_path):
    write_corpus(tmp_path)
    shard = sorted(tmp_path.glob("corpus-*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[:700])
    dataset = ShardDataset(tmp_path, BLOCK, seed=0)
    with pytest.raises(ShardError, match=shard.name):
        for _ in RankBatches(dataset, micro_batch=2, dp_rank=0, dp_size=1):
            pass


def test_missing_manifest_says_how_to_build(tmp_path):
    with pytest.raises(ShardError, match=MANIFEST_NAME):
        ShardDataset(tmp_path, BLOCK, seed=0)


@pytest.fixture
def mixture(tmp_path) -> MixtureDataset:
    """A small corpus (tokens 2..499) weighted 3 against a larger one (tokens 600..1097) weighted 1."""
    write_corpus(tmp_path / "small", n_docs=30, seed=1)
    write_corpus(tmp_path / "large", n_docs=90, seed=2, low=600)
    return open_dataset("", [f"{tmp_path / 'small'}=3", f"{tmp_path / 'large'}=1"], BLOCK, seed=7)


def source_of(window: np.ndarray) -> int:
    """0 for the small corpus, 1 for the large one (EOS belongs to both)."""
    body = window[window != EOS]
    assert (body < 600).all() or (body >= 600).all()  # a window never mixes corpora
    return int(body[0] >= 600)


def test_mixture_draws_by_weight_and_reads_each_corpus_in_order(mixture):
    small, large = mixture.datasets
    assert mixture.windows_per_epoch == small.windows_per_epoch + large.windows_per_epoch
    sources, per_source = [], {0: [], 1: []}
    for epoch in range(3):
        for window in mixture.iter_windows(epoch):
            per_source[source_of(window)].append(window)
            sources.append(source_of(window))
    n = len(sources)
    assert abs(sources.count(0) / n - 0.75) < 3 * np.sqrt(0.75 * 0.25 / n)
    # each corpus is read as its own stream, on through its epochs: nothing repeated or skipped
    for i, dataset in enumerate((small, large)):
        expected = list(itertools.islice(_endless(dataset, 0), len(per_source[i])))
        assert all(np.array_equal(a, b) for a, b in zip(per_source[i], expected))
    assert len(per_source[0]) > 2 * small.windows_per_epoch  # the small corpus was repeated


@pytest.mark.parametrize("start", [0, 1, 17, 40])
def test_mixture_resumes_mid_epoch(mixture, start):
    for epoch in (0, 2):
        full = list(mixture.iter_windows(epoch))
        resumed = list(mixture.iter_windows(epoch, start))
        assert len(resumed) == len(full) - start
        assert all(np.array_equal(a, b) for a, b in zip(resumed, full[start:]))


@pytest.mark.parametrize("kind", ["shards", "mixture"])
def test_restore_is_exact_when_the_data_parallel_size_changes(corpus, mixture, kind):
    """Saved at dp=2 x micro 2, restored at dp=4 x micro 1 and dp=1 x micro 4: the same global batches."""
    dataset = corpus[0] if kind == "shards" else mixture
    ranks = [RankBatches(dataset, micro_batch=2, dp_rank=r, dp_size=2) for r in range(2)]
    steps = dataset.windows_per_epoch // 4 - 2  # so that the continuation crosses an epoch
    for _ in range(steps):
        for r in ranks:
            next(r)
    saved = ranks[0].state.to_dict()
    straight = [np.concatenate([next(r)[0] for r in ranks]) for _ in range(6)]
    for dp, micro in ((4, 1), (1, 4)):
        restored = [RankBatches(dataset, micro, r, dp, DataState(**saved)) for r in range(dp)]
        for expected in straight:
            assert np.array_equal(np.concatenate([next(r)[0] for r in restored]), expected)
    assert restored[0].state.epoch == 1


def test_mixture_refuses_what_it_cannot_mix(tmp_path):
    write_corpus(tmp_path / "a")
    write_corpus(tmp_path / "b", tokenizer_sha="1" * 64)
    with pytest.raises(ValueError, match="different tokenizers"):
        open_dataset("", [f"{tmp_path / 'a'}=1", f"{tmp_path / 'b'}=1"], BLOCK, seed=0)
    with pytest.raises(ValueError, match="expected FOLDER=WEIGHT"):
        open_dataset("", [str(tmp_path / "a")], BLOCK, seed=0)
    with pytest.raises(ValueError, match="data.mixture entry .*=0'. the weight must be a positive number"):
        open_dataset("", [f"{tmp_path / 'a'}=0"], BLOCK, seed=0)
    with pytest.raises(ValueError, match="must all be positive"):  # the dataset's own check, NaN too
        MixtureDataset([ShardDataset(tmp_path / "a", BLOCK, seed=0)], [float("nan")], seed=0)
