"""HTML extraction scored against the human-checked main text of real pages."""

import gzip
import json
from pathlib import Path

from pipelines.clean import clean_text
from pipelines.extract import extract_html, word_scores

SAMPLE = Path(__file__).resolve().parents[2] / "data/sample"


def test_main_text_matches_ground_truth_on_real_pages():
    truth = json.loads((SAMPLE / "ground-truth.json").read_text())
    keys = sorted(truth)[::9]  # 21 pages across the set
    scores = []
    for key in keys:
        html = gzip.decompress((SAMPLE / "html" / f"{key}.html.gz").read_bytes())
        page = extract_html(html)
        scores.append(word_scores(clean_text(page.text), truth[key]["articleBody"])[2])
    assert sum(scores) / len(scores) > 0.9, scores
    assert sum(s > 0.8 for s in scores) >= len(scores) - 2


def test_page_without_main_text_gives_empty_text():
    page = extract_html(b"<html><head><script>var x = 1;</script></head><body></body></html>")
    assert page.text.strip() == ""


def test_clean_repairs_mojibake_and_whitespace_but_keeps_paragraphs():
    broken = "The cafÃ© said â€œhelloâ€\x9d.  \r\n\r\n\r\n\r\nSecond\x07 paragraph.   \n"
    assert clean_text(broken) == "The café said \"hello\".\n\nSecond paragraph."  # ftfy also uncurls quotes
