"""A corpus folder's file named '__x' is one of the files its checks read, as datasets reads it.

The fault (found by folder36): the folder's walk (corpus_folder.refuse_prepared) left out files whose names start
with '__', as datasets leaves out folders so named; but datasets reads such files (its walk skips only '__' folders
and '.' names), so the json line bound, the text document bound and the not-read warning never looked at them: a
'__big.txt' of one 2 GB line was read whole, past the bound the other files are held to."""

from pathlib import Path

from ngpt_ds.data.corpus_folder import refuse_prepared
from ngpt_ds.data.sources import CorpusSpec, _builder_of


def test_a_file_named_dunder_is_walked_as_datasets_reads_it(tmp_path):
    folder = tmp_path / "corpus"
    for name, text in {"a.txt": "a\n", "__x.txt": "x\n", "__cache__/y.txt": "y\n", ".h.txt": "h\n"}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    walked = refuse_prepared(folder)
    # old code: [.../a.txt] and unlike_datasets True (datasets then asked, and the checks skipped __x.txt)
    assert walked.files == [str(folder / "__x.txt"), str(folder / "a.txt")]
    assert not walked.unlike_datasets
    theirs = _builder_of(folder, CorpusSpec(inputs=(str(folder),)))
    assert theirs is not None
    assert sorted(Path(f).name for f in theirs[1]["train"]) == ["__x.txt", "a.txt"]
