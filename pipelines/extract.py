"""HTML to main text with trafilatura (boilerplate, navigation and comments removed).

trafilatura is the best-scoring open extractor on the article-extraction benchmark bundled in
data/sample (published F1 0.958; bench/extraction.py measures it here on the 181 pages and
tests/corpus/test_extract.py keeps it above 0.9).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import trafilatura


@dataclass
class Extracted:
    text: str  # '' when the page has no main text
    url: str | None  # the page's canonical URL when it declares one


def extract_html(html: str | bytes, url: str | None = None) -> Extracted:
    doc = trafilatura.bare_extraction(html, url=url, with_metadata=True, include_comments=False,
                                      include_tables=False, deduplicate=False)
    if doc is None:
        return Extracted("", url)
    return Extracted(doc.text or "", doc.url or url)


def word_scores(predicted: str, truth: str) -> tuple[float, float, float]:
    """Bag-of-words precision, recall and F1 of extracted text against the true main text."""
    p, t = (Counter(re.findall(r"\w+", s.lower())) for s in (predicted, truth))
    common = sum((p & t).values())
    if not common:
        return 0.0, 0.0, 0.0
    precision, recall = common / sum(p.values()), common / sum(t.values())
    return precision, recall, 2 * precision * recall / (precision + recall)
