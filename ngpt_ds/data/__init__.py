"""Data pipeline: corpus -> sentencepiece tokenizer -> flat binary token shards -> batches.

Modules, one job each:
  sources        read a corpus (local files, a saved dataset, a hub dataset) through HF `datasets`
  tokenizer      train or load a sentencepiece model; `Tokenizer` wrapper
  encode         tokenize documents in worker processes, in order, with bounded memory
  shards         on-disk format: `meta.json` + `<split>_NNNNNN.bin`; `load_dataset_meta` validates it
  shard_writer   `ShardWriter`: one split's tokens into shard files, each hashed as it is closed
  capped_json    meta.json and part.json read no further than a size no real one reaches
  fingerprint    one sha256 of a split as its readers read it (resume checks)
  prepare        `prepare_dataset`: the whole preparation, written atomically
  default_corpus the King James Bible default corpus, fetched once with pip and cached
  windows        map window numbers to token slices of shards held open (read with pread)
  loader         `TokenWindowLoader` (seeded, resumable, data-parallel) and `validation_batches`

Nothing heavy is imported here: worker processes import `encode` through this package.
"""
