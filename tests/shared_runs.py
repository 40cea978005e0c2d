"""Folders made once per pytest run and shared by its xdist workers (shared_folder), and the reference runs
several test modules compare against (ReferenceRuns, conftest's reference_runs fixture). Re-exported by conftest,
where the tests import them from."""

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

from launching import train_run
from run_configs import tiny_ngpt, tiny_train, write_ds_config, write_yaml


def shared_key(arguments: dict) -> tuple[str, str]:
    """shared_folder's record of `arguments` (their JSON) and its key, the folder's name."""
    text = json.dumps(arguments, sort_keys=True, default=str)
    return text, hashlib.sha256(text.encode()).hexdigest()[:16]


def shared_root(tmp_path_factory) -> Path:
    """Where shared_folder makes its folders: in the pytest run's base temporary folder, which holds the xdist
    workers' own."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared_runs"


def shared_folder(tmp_path_factory, arguments: dict, make) -> Path:
    """The folder that make(folder) filled for `arguments`, made once per pytest run and shared by its xdist workers: a
    session fixture is built again in each worker, and --dist loadfile puts the test files that need the same run
    on different workers. Keyed by the arguments' JSON, made under an exclusive lock (a second worker waits for the
    first's), in the run's base temporary folder (the workers' are inside it). A make that raised leaves no DONE:
    the next caller makes the folder again. Each make adds a line (key, worker) to made.log beside the folders:
    tests/test_shared_folder.py counts them. Callers only read the folder: one that writes copies it first."""
    root = shared_root(tmp_path_factory)
    root.mkdir(exist_ok=True)
    text, key = shared_key(arguments)
    folder = root / key
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released as the file closes
        if not (folder / "DONE").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            with open(root / "made.log", "a") as log:
                log.write(f"{key} {os.environ.get('PYTEST_XDIST_WORKER', 'main')}\n")
            make(folder)
            (folder / "DONE").write_text(text)
    return folder


REFERENCE_STEPS = 20
REFERENCE_TRAIN = tiny_train(REFERENCE_STEPS, eval_interval=10, checkpoint_interval=10, keep_checkpoints=3)


class ReferenceRuns:
    """The end-to-end runs that several test modules compare against: tiny_ngpt() with REFERENCE_TRAIN on a copy of
    tiny_dataset, fp32.
      "z0_ws1": 1 rank, ZeRO 0, micro-batch 4 x 2 accumulation;
      "z2_ws2": 2 ranks, ZeRO 2, micro-batch 4 (the same global batch of 8).
    Each is trained once per pytest run, when a test first asks for it, and shared by the xdist workers
    (shared_folder: it was trained once per worker, twice a CI run, 20-30 s of CPU each time). A test module gets a
    private copy of each run it asks for (one of its tests trains on in it: test_trainer's --resume auto), so no
    module sees another's writes; the config files and the dataset are the shared ones, only read."""

    DS = {"z0_ws1": (0, 2, 1), "z2_ws2": (2, 1, 2)}  # name -> ZeRO stage, accumulation, ranks

    def __init__(self, tmp_path_factory, tiny_dataset: Path):
        self._factory = tmp_path_factory
        model, train = tiny_ngpt(), REFERENCE_TRAIN

        def inputs(folder: Path) -> None:
            shutil.copytree(tiny_dataset, folder / "data")  # prepared alike in every worker (a deterministic prepare)
            write_yaml(folder / "tiny.yaml", model, train)
            for stage, accum, _ in self.DS.values():
                write_ds_config(folder / f"z{stage}.json", stage=stage, bf16=False, micro=4, accum=accum)

        self._arguments = {"reference_runs": "inputs", "model": model, "train": train, "ds": self.DS}
        shared = shared_folder(tmp_path_factory, self._arguments, inputs)
        self.data, self.config = shared / "data", shared / "tiny.yaml"
        self.ds = {name: shared / f"z{stage}.json" for name, (stage, _, _) in self.DS.items()}
        self._done: dict[str, Path] = {}

    def __getitem__(self, name: str) -> Path:
        if name not in self._done:

            def train(folder: Path) -> None:
                train_run(self.config, self.ds[name], self.data, folder / name, nproc=self.DS[name][2])

            shared = shared_folder(self._factory, {**self._arguments, "reference_runs": name}, train)
            mine = self._factory.mktemp("reference_runs") / name
            shutil.copytree(shared / name, mine, symlinks=True)
            self._done[name] = mine
        return self._done[name]
