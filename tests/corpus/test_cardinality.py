"""The HyperLogLog distinct-count sketch against exact np.unique counts of real text 8-grams."""

import numpy as np
import pytest

from pipelines.cardinality import HyperLogLog
from pipelines.ngrams import ngram_hashes_batch
from pipelines.overlap import _ESTIMATE_SIGMAS


@pytest.fixture(scope="module")
def ngram_sets(articles, lambada, wikitext) -> dict[str, np.ndarray]:
    sets = {"articles": articles, "lambada": lambada, "wikitext": [wikitext], "three passages": lambada[:3]}
    hashes = {name: ngram_hashes_batch(texts)[0] for name, texts in sets.items()}
    hashes["all"] = np.concatenate(list(hashes.values()))  # repeats: the three passages are in lambada
    return hashes


def test_estimate_within_the_stated_error_on_real_ngrams(ngram_sets):
    for name, hashes in ngram_sets.items():
        sketch = HyperLogLog()
        sketch.add(hashes)
        exact = len(np.unique(hashes))
        # the filter is sized for estimate * (1 + 3 rse): the bound the overlap checker relies on
        error = abs(sketch.estimate() / exact - 1)
        assert error <= _ESTIMATE_SIGMAS * sketch.relative_std_error, (name, exact, sketch.estimate())
        assert sketch.upper_bound(_ESTIMATE_SIGMAS) >= exact, name
    assert sketch.relative_std_error == pytest.approx(0.0041, abs=1e-4)  # 1.04 / sqrt(2^16)
    assert HyperLogLog().estimate() == 0.0


def test_merged_sketches_equal_the_sketch_of_the_union(ngram_sets):
    hashes = ngram_sets["all"]
    whole, left, right = HyperLogLog(), HyperLogLog(), HyperLogLog()
    whole.add(hashes)
    left.add(hashes[::2])
    right.add(hashes[1::2])
    assert np.array_equal((left | right).registers, whole.registers)
    # a half alone is far outside the bound, so the estimate test above can fail
    exact = len(np.unique(hashes))
    assert abs(left.estimate() / exact - 1) > 10 * _ESTIMATE_SIGMAS * whole.relative_std_error
    with pytest.raises(ValueError, match="precision 16 and 12"):
        whole | HyperLogLog(12)
