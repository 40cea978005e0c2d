"""A datasets release without one of the private rules the corpus folder's quick path reads still opens the folder,
through datasets' own path.

The fault: 4782f4b's `corpus_folder.train_files` imports private names of datasets (`_MODULE_TO_METADATA_EXTENSIONS`
and others, read as of datasets 5.2) at every folder's open; setup.py allows datasets >= 2.19, and a release without
one of them stopped every folder corpus on "ImportError: cannot import name ...". Now the quick path stands aside."""

import datasets.packaged_modules

from ngpt_ds.data import corpus_folder
from ngpt_ds.data.sources import CorpusSpec, open_corpus


def test_a_missing_private_rule_falls_back_to_datasets(tmp_path, monkeypatch):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("one\n\ntwo\n")
    (folder / "sub" / "b.txt").write_text("three\n")
    walked = corpus_folder.refuse_prepared(folder)
    formats = dict.fromkeys(walked.files, "text")
    assert corpus_folder.train_files(folder, walked, formats) is not None  # the quick path, with the rules there
    monkeypatch.delattr(datasets.packaged_modules, "_MODULE_TO_METADATA_EXTENSIONS")
    # old code: ImportError: cannot import name '_MODULE_TO_METADATA_EXTENSIONS' from 'datasets.packaged_modules'
    assert corpus_folder.train_files(folder, walked, formats) is None
    read = open_corpus(CorpusSpec(inputs=(str(folder),)))
    assert list(read.texts()) == ["one", "two\n", "three\n"]
