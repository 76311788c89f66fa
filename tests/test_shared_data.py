"""The golden and corpus tests are parametrised over ``../shared``; without it they would vanish from the run
(an empty parameter set) and the suite would pass having checked nothing against Caffe. This test fails instead,
naming where the data was looked for."""

from __future__ import annotations

from golden import CORPUS, GOLDEN, SHARED, cases

#: suite -> at least this many cases (the shared data as of this writing holds these or more)
MINIMUM = {"layers": 150, "nets": 9, "zoo": 40, "solvers": 16}


def test_golden_and_corpus_data_are_there() -> None:
    hint = f"the shared Caffe data is expected at {SHARED} (set PROTOTXT2PY_SHARED to its folder)"
    found = {suite: len(cases(suite)) for suite in MINIMUM}
    assert all(found[s] >= n for s, n in MINIMUM.items()), f"golden cases {found}, expected {MINIMUM}: {hint}"
    assert (GOLDEN / "README.md").is_file(), hint
    manifest = CORPUS / "MANIFEST.tsv"
    assert manifest.is_file() and len(manifest.read_text().splitlines()) > 200, hint
