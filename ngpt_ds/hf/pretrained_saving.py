"""transformers' save_pretrained for ngpt_ds's models (modeling_ngpt): the folder also gets config.json's `auto_map`
and the modeling files it names, so that it loads with trust_remote_code without ngpt_ds, and weights that record the
model config (ngpt_ds.hf.recorded_config), as an export's do.

This file is also copied into every `--format hf` export (with its ngpt_ds imports made relative).
"""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel
from transformers import modeling_utils as hf_modeling_utils

from ngpt_ds.hf.recorded_config import record_in_saved_weights, weights_files_state
from ngpt_ds.hf.training_guards import _check_gathered


class SavedWithCode(PreTrainedModel):
    """The saving half of modeling_ngpt's models."""

    @classmethod
    def auto_map(cls) -> dict[str, str]:
        """config.json's `auto_map` (modeling_ngpt defines it: it names the classes there)."""
        raise NotImplementedError

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]  # transformers' parameters, passed on unchanged
        """transformers' save_pretrained; as ngpt_ds's installed code, also `auto_map` in config.json and the
        modeling files it names (ngpt_ds.hf.export.write_code), so the folder loads with trust_remote_code
        without ngpt_ds, as an export does. A class loaded with trust_remote_code (an export's copy of
        modeling_ngpt.py) has its file and the files it imports relatively copied by transformers: nothing to add
        then. The
        weights written record the model config, as an export's do (ngpt_ds.hf.recorded_config).

        With push_to_hub=True the folder is uploaded after the modeling files are written, as transformers
        uploads it (the files saved, by their timestamps): transformers' own save_pretrained uploads before
        returning, which left the modeling files out of the Hub repository its auto_map points at."""
        installed = __name__ == "ngpt_ds.hf.pretrained_saving"  # not an export's copy
        if installed and not getattr(self.config, "auto_map", None):
            self.config.auto_map = self.auto_map()
        named = inspect.signature(PreTrainedModel.save_pretrained).bind(self, save_directory, *args, **kwargs).arguments
        named.pop("self")
        if named.get("state_dict") is None:  # the Trainer passes the gathered state_dict under ZeRO 3
            _check_gathered(self)  # ZeRO-3 partitions were saved as empty tensors
        extra = named.pop("kwargs", {})
        push = named.pop("push_to_hub", False)
        upload = bool(push) and self.should_save_on_this_rank(named.get("is_main_process", True))
        hub = {k: extra.pop(k) for k in ("commit_message", "repo_id", "create_pr") if k in extra}
        if upload:  # the other keyword arguments go to create_repo, as in transformers
            repo_id, timestamps = self._hub_repo(save_directory, hub.get("repo_id"), named.get("token"), extra)
        saving = self.should_save_on_this_rank(named.get("is_main_process", True))
        before = weights_files_state(save_directory) if saving else {}
        super().save_pretrained(**named, **({} if upload else extra))
        if saving and not named.get("distributed_checkpoint") and not getattr(self, "_hf_peft_config_loaded", False):
            record_in_saved_weights(save_directory, before, self.config)  # from_pretrained checks config.json by it
        if installed and named.get("is_main_process", True):
            # By name: an import statement would make the export copy ngpt_ds.hf.export (and all it imports) too.
            importlib.import_module("ngpt_ds.hf.export").write_code(Path(save_directory))
        if upload:
            token = named.get("token")
            # transformers' steps after saving (PreTrainedModel.save_pretrained with push_to_hub=True).
            card = hf_modeling_utils.create_and_tag_model_card(repo_id, self.model_tags, token=token)
            card.save(os.path.join(save_directory, "README.md"))
            self._upload_modified_files(
                save_directory,
                repo_id,
                timestamps,
                commit_message=hub.get("commit_message"),
                token=token,
                create_pr=hub.get("create_pr", False),
            )

    def _hub_repo(
        self, save_directory: str | os.PathLike, repo_id: str | None, token: Any, create_kwargs: dict[str, Any]
    ) -> tuple[str, dict[str, float]]:
        """transformers' steps before saving with push_to_hub=True: create the Hub repository (the folder's name
        unless repo_id is given; the other keyword arguments go to create_repo) and note the folder's files'
        timestamps (the files saved after are the ones uploaded)."""
        os.makedirs(save_directory, exist_ok=True)
        if repo_id is None:
            repo_id = os.fspath(save_directory).split(os.path.sep)[-1]
        if token is not None:
            create_kwargs = {**create_kwargs, "token": token}
        created = hf_modeling_utils.hf_api().create_repo(repo_id, exist_ok=True, **create_kwargs)
        return created.repo_id, self._get_files_timestamps(save_directory)
