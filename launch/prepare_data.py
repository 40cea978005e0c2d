"""Tokenize a corpus into ngpt_ds token shards (installed as `ngpt-prepare`).

    python launch/prepare_data.py                                   # default corpus, into the cache
    python launch/prepare_data.py --input 'data/*.jsonl' --out data/mycorpus
    python launch/prepare_data.py --input Skylion007/openwebtext --out data/owt --vocab-size 32768

The command line lives in ngpt_ds.cli.prepare; the logic in ngpt_ds.data.
"""

import sys

from ngpt_ds.cli.prepare import main

if __name__ == "__main__":
    sys.exit(main())
