"""One chunk of raw input through the per-document stages of a build: read, extract, clean,
filter, then the keys of the corpus-wide decisions (digest, MinHash signature and LSH bands,
contamination by eval set). The survivors' texts and those keys go to the work area as files; the
digests and band hashes sorted, with where each hash range starts, so that a rank deciding one
range reads only its rows of each chunk (pipelines/dedup.py).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import zstandard

from pipelines.build_settings import BuildSettings
from pipelines.clean import clean_text
from pipelines.decontaminate import Decontaminator
from pipelines.dedup import band_records, digest_records, range_bounds, text_digest
from pipelines.documents import RawDocument
from pipelines.extract import extract_html
from pipelines.filters import FilterConfig, reject_reason
from pipelines.minhash import MinHasher
from pipelines.quality_model import QualityModel
from pipelines.sources import Chunk, read_chunk
from pipelines.workarea import WorkArea, save_array


class ChunkMapper:
    def __init__(self, settings: BuildSettings, files: list[Path], area: WorkArea):
        self.settings, self.files, self.area = settings, files, area
        self.filters = FilterConfig(settings.min_chars, settings.min_alpha, settings.blocked_domains)
        self.hasher = MinHasher(settings.num_perm, settings.shingle, seed=settings.seed + 1)
        self.decontaminator = Decontaminator(settings.decontaminate, settings.decontaminate_threshold)
        self.eval_names = list(settings.decontaminate)
        self.quality = QualityModel.load(settings.quality) if settings.quality else None

    def map(self, chunk: Chunk) -> None:
        """Read, extract, clean and filter the chunk's documents; write the survivors' texts and
        what the corpus-wide decisions need of them."""
        unit = chunk.id
        skipped, no_text, filtered, truncated = Counter(), Counter(), Counter(), Counter()
        n_read = 0
        kept: list[tuple[int, str, str, str | None]] = []
        for raw in read_chunk(self.files, chunk, skipped, self.settings.text_field, truncated):
            n_read += 1
            text, url = _extract(raw, self.settings.extractor)
            if not text.strip():
                no_text["no_main_text"] += 1
                continue
            text = clean_text(text)
            reason = reject_reason(text, url, self.filters)
            if reason is not None:
                filtered[reason] += 1
                continue
            kept.append((raw.key, text, raw.source, url))
        keys = np.array([k for k, *_ in kept], np.uint64)
        digests = np.frombuffer(b"".join(text_digest(t) for _, t, _, _ in kept), np.uint8).reshape(-1, 16)
        signatures = self.hasher.signatures([t for _, t, _, _ in kept])
        signed = np.array([s is not None for s in signatures], bool)
        blank = np.zeros(self.settings.num_perm, np.uint32)  # no words: never a near duplicate
        sigs = np.array([blank if s is None else s for s in signatures], np.uint32).reshape(-1, len(blank))
        contamination = np.array([self._contamination(t) for _, t, _, _ in kept], np.int16)
        with zstandard.open(self.area.file("map", unit, "texts.jsonl.zst"), "wt", encoding="utf-8") as out:
            for _, text, source, url in kept:
                out.write(json.dumps({"text": text, "source": source, "url": url}, ensure_ascii=False) + "\n")
        # scored here, kept or dropped in the decide step: a new --quality-alpha redoes only that
        scores = {"quality": self.quality.score([t for _, t, _, _ in kept])} if self.quality else {}
        np.savez(self.area.file("map", unit, "docs.npz"), keys=keys, digests=digests,
                 contamination=contamination, **scores)
        save_array(self.area.file("map", unit, "signatures.npy"), sigs)
        exact = digest_records(keys, digests)
        save_array(self.area.file("map", unit, "digests.npy"), exact)
        save_array(self.area.file("map", unit, "digests.bounds.npy"), range_bounds(exact["d0"]))
        bands = band_records(keys[signed], sigs[signed], *self.settings.lsh_bands())
        save_array(self.area.file("map", unit, "bands.npy"), bands)
        save_array(self.area.file("map", unit, "bands.bounds.npy"), range_bounds(bands["h"]))
        self.area.finish("map", unit, {"read": n_read, "skipped": skipped, "no_text": no_text,
                                       "filtered": filtered, "kept": len(kept), "truncated": truncated})

    def _contamination(self, text: str) -> int:
        reason = self.decontaminator.reject_reason(text)
        return -1 if reason is None else self.eval_names.index(reason.split(":", 1)[1])


def _extract(raw: RawDocument, extractor: str) -> tuple[str, str | None]:
    if not raw.is_html:
        return raw.content, raw.url
    page = extract_html(raw.content, raw.url, raw.charset, extractor)
    return page.text, page.url
