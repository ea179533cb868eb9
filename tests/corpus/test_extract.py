"""HTML extraction scored against the human-checked main text of real pages."""

import gzip
import json
import random
from pathlib import Path

import ftfy

from pipelines.clean import clean_text, fix_unicode
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


def test_fix_unicode_equals_ftfy_on_real_and_broken_text(articles, lambada, wikitext):
    """Skipping plain-ASCII lines changes nothing: the same text as ftfy.fix_text, line for line."""
    broken = ["cafÃ© &amp; bar\r\nnext", "<b>x</b>\n&amp; here\n", "&lt;tag&gt;\nline2 &amp;",
              "\x1b[31mred\x1b[0m & co", "ﬁne ｆｕｌｌ “quoted”\n\x85x\u2028y", "a\x00b\x07c\n\ttab",
              "Ã¢â‚¬â„¢ mojibake", "plain < markup first\n&amp; then an entity"]
    texts = articles + lambada[:500] + [wikitext[i : i + 5000] for i in range(0, len(wikitext), 5000)]
    rng = random.Random(0)
    texts += broken + ["\n".join(rng.sample(articles + broken, 3)) for _ in range(200)]
    assert [fix_unicode(t) for t in texts] == [ftfy.fix_text(t, normalization="NFC") for t in texts]


def test_fix_unicode_equals_ftfy_on_random_lines_of_risky_characters():
    """The lines that skip ftfy (ASCII and typographic punctuation; or letters beyond ASCII that
    ftfy's own gates pass) come out as ftfy.fix_text makes them: random lines of those, with and
    without characters that ftfy acts on next to them (mojibake lead bytes, C1 controls, entities,
    ligatures, wide forms, combining accents, line separators)."""
    rng = random.Random(1)
    typographic = "\u2018\u2019\u201c\u201d\u2013\u2014\u2026"
    risky = ["\u00e2", "\u00c3", "\u00c2", "\u00e9", "\u20ac", "\u0080", "\u0093", "\u00a0", "\u00d5",
             "\u0393", "&amp;", "\x1b[0m", "\u2028", "\u02bc", "\u201b", "\u201e", "\u00c3\u00a9",
             "\u00e2\u20ac\u2122", "e\u0301", "\ufb01", "\uff21", "\x85", "\ufeff", "\u00c3\u00a0"]
    for letters in ("", "\u00e9\u00f1\u00fc\u014d\u03b1\u00c9\u00b0"):
        alphabet = list("abc XYZ.,'\"-&<") + list(typographic + letters)
        lines = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(3000)]
        lines += [line[:k] + rng.choice(risky) + line[k:] for line in lines[:1500]
                  for k in [rng.randint(0, len(line))]]
        texts = ["\n".join(rng.sample(lines, 4)) for _ in range(1500)] + lines
        assert [fix_unicode(t) for t in texts] == [ftfy.fix_text(t, normalization="NFC") for t in texts]
