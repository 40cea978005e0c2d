"""The merge of parts reads each part's block list against the document count its part.json claims.

Fault: merge_parts built `list(range(k, n_blocks, num_parts))`, n_blocks from part.json's `documents`, before
comparing it with the blocks the part lists: a crafted `documents` of 10^30 stopped the merge with
`OverflowError: Python int too large to convert to C ssize_t` (a traceback), and one of 10^9 (block_docs 40)
built a list of 12.5 million ints (500 MB at its peak, 55 s) before refusing; each digit more, ten times that. The expected
blocks are now taken no further than the blocks listed, and the refusal names the part.
"""

from __future__ import annotations

import json

import pytest

from ngpt_ds.errors import NgptConfigError

from conftest import peak_python_bytes


@pytest.fixture
def parts(tiny_dataset, tmp_path):
    from test_data_parts import config, write_corpus

    from ngpt_ds.data.parts import prepare_part

    corpus, out = write_corpus(tmp_path / "c"), tmp_path / "parts"
    for k in range(2):
        prepare_part(config(corpus, out, tiny_dataset / "tokenizer.model"), 2, k, 40)
    return out


def _claim_documents(out, documents):
    """Set `documents` in both parts' part.json (it must agree between parts); returns part 0's listed blocks."""
    for k in range(2):
        path = out / f"part-{k:05d}-of-00002" / "part.json"
        info = json.loads(path.read_text())
        info["documents"] = documents
        path.write_text(json.dumps(info))
        if k == 0:
            listed = [b["block"] for b in info["blocks"]]
    return listed


@pytest.mark.parametrize("documents", [10**30, 10**9])
def test_a_crafted_document_count_is_refused_naming_the_part_without_building_its_blocks(parts, documents):
    from ngpt_ds.data.parts import merge_parts

    listed = _claim_documents(parts, documents)
    caught = []

    def merge():
        with pytest.raises(NgptConfigError) as err:
            merge_parts(parts, 2, progress=False)
        caught.append(str(err.value))

    peak = peak_python_bytes(merge)
    expected = list(range(0, 20, 2))  # the first 10 of part 0's blocks: 0, 2, 4, ...
    assert caught == [
        f"{parts / 'part-00000-of-00002'}/part.json: holds blocks {listed[:10]}, expected {expected[:10]} for "
        f"{documents} documents; prepare part 0 again"
    ]
    # The read buffer of part.json (MAX_PART_BYTES, 64 MiB) and the parts' JSON; the old list for 10^9 documents
    # peaked at 500 MB.
    assert peak < 96 << 20
    assert not (parts / "meta.json").exists()
