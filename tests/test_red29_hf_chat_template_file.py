"""An `--format hf` export's chat_template.jinja is checked with its other tokenizer files.

The fault (red29, session 29): saved_weights.TOKENIZER_FILES left out chat_template.jinja (and the older
chat_template.json), which transformers' AutoTokenizer reads from the folder whenever it is there: a named pipe at
that name in a folder someone handed over made the tokenizer load wait for a writer for good, a link to /dev/zero
read until memory ran out, and a link out of the folder read a template elsewhere. The export's config class
(where lm-eval and from_pretrained read the folder first) now refuses them as it refuses such a tokenizer.json.
"""

from __future__ import annotations

import os

import pytest
from fed_pipe import fed_pipe
from hf_exports import FIX, auto_config

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")


def test_a_chat_template_that_is_a_named_pipe_is_refused_unopened(hf_export_copy):
    from ngpt_ds.errors import NgptConfigError

    pipe = hf_export_copy / "chat_template.jinja"
    with fed_pipe(pipe, b"{{ messages }}"), pytest.raises(NgptConfigError) as caught:
        auto_config(hf_export_copy)
    assert str(caught.value) == f"{pipe} is a named pipe, not a tokenizer file of the folder; {FIX}"


@pytest.mark.parametrize("name", ["chat_template.jinja", "chat_template.json"])
def test_a_chat_template_linked_out_of_the_folder_is_refused(hf_export_copy, tmp_path, name):
    from ngpt_ds.errors import NgptConfigError

    outside = tmp_path / "elsewhere.jinja"
    outside.write_text("{{ messages }}")
    (hf_export_copy / name).symlink_to(outside)
    with pytest.raises(NgptConfigError) as caught:
        auto_config(hf_export_copy)
    assert str(caught.value) == (
        f"{hf_export_copy / name} is a link to {os.path.realpath(outside)}, outside the folder, not a tokenizer file of the "
        f"folder; {FIX}"
    )


def test_a_chat_template_of_the_folder_and_a_link_within_it_load(hf_export_copy):
    """A regular chat_template.jinja, and a link to a file inside the folder, are the folder's own: they load."""
    from transformers import AutoTokenizer

    (hf_export_copy / "templates").mkdir()
    (hf_export_copy / "templates" / "chat.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (hf_export_copy / "chat_template.jinja").symlink_to(os.path.join("templates", "chat.jinja"))
    assert auto_config(hf_export_copy).n_layer > 0
    tokenizer = AutoTokenizer.from_pretrained(str(hf_export_copy))
    assert tokenizer.chat_template == "{% for m in messages %}{{ m['content'] }}{% endfor %}"
