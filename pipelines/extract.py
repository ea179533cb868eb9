"""HTML to main text (boilerplate, navigation and comments removed), by one of two extractors.

- trafilatura (the default) is the best-scoring open extractor on the article-extraction
  benchmark bundled in data/sample (published F1 0.958).
- resiliparse (`extract_plain_text(main_content=True)`, C++/Cython, made for large crawls) is
  about 4-5x faster and a few F1 points less accurate.
bench/extraction.py measures both on the 181 pages; tests/corpus/test_extract.py keeps each above
its floor. Bytes are decoded with the charset the HTTP header gave, else detected.

Both are imported on the first page extracted, not with this module: with lxml and their HTML
tooling they hold about 120 MiB that a build of text or JSON lines never uses.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass


@dataclass
class Extracted:
    text: str  # '' when the page has no main text
    url: str | None  # the URL it was fetched from (a WARC's target URI), else its declared canonical URL


EXTRACTORS = ("trafilatura", "resiliparse")


def extract_html(html: str | bytes, url: str | None = None, charset: str | None = None,
                 extractor: str = "trafilatura") -> Extracted:
    import trafilatura
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding
    from resiliparse.parse.html import HTMLTree

    if isinstance(html, bytes) and (charset or extractor == "resiliparse"):
        html = bytes_to_str(html, charset or detect_encoding(html))
    if extractor == "resiliparse":
        # alt texts are not article text: without them F1 0.915, with them 0.898 on the sample pages
        return Extracted(extract_plain_text(HTMLTree.parse(html), main_content=True, alt_texts=False), url)
    doc = trafilatura.bare_extraction(html, url=url, with_metadata=True, include_comments=False,
                                      include_tables=False, deduplicate=False)
    if doc is None:
        return Extracted("", url)
    return Extracted(doc.text or "", url or doc.url)  # where it was fetched from, else its canonical URL


def word_scores(predicted: str, truth: str) -> tuple[float, float, float]:
    """Bag-of-words precision, recall and F1 of extracted text against the true main text."""
    p, t = (Counter(re.findall(r"\w+", s.lower())) for s in (predicted, truth))
    common = sum((p & t).values())
    if not common:
        return 0.0, 0.0, 0.0
    precision, recall = common / sum(p.values()), common / sum(t.values())
    return precision, recall, 2 * precision * recall / (precision + recall)
