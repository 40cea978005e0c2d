"""A weights shard that is a named pipe is refused by from_pretrained before it is opened.

Fault: transformers opens the shards a folder's model.safetensors.index.json lists without looking at what they
are, and NGPTForCausalLM._load_pretrained_model opened each with safe_open to check its dtypes: a named pipe among
them (an archive keeps one) made from_pretrained wait on the open forever, without a word. load_export refuses a
named pipe as model.safetensors; the transformers path now refuses one too, naming it.
"""

from __future__ import annotations

import json

import pytest
from fed_pipe import fed_pipe
from random_export import export_random_ngpt

from ngpt_ds.errors import NgptConfigError

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")


def test_a_named_pipe_listed_as_a_shard_is_refused_before_it_is_opened(tmp_path, tiny_dataset):
    from safetensors import safe_open

    from ngpt_ds.hf import NGPTForCausalLM

    folder, _ = export_random_ngpt(tmp_path, tiny_dataset / "tokenizer.model", "hf")
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        names = sorted(f.keys())  # noqa: SIM118
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    fifo = folder / "model-00002-of-00002.safetensors"
    weight_map = {name: "model-00001-of-00002.safetensors" for name in names}
    weight_map[names[0]] = fifo.name
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with fed_pipe(fifo), pytest.raises(NgptConfigError) as caught:
        NGPTForCausalLM.from_pretrained(str(folder))
    assert str(caught.value) == (
        f"{fifo} is a named pipe, not a weights file; the files are damaged, altered or from another program"
    )
