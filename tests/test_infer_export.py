"""Consolidated export of a ZeRO-2, 2-rank checkpoint: same logits as the live model, round trip.

The `trained` fixture trains a tiny nGPT on 2 gloo ranks (ZeRO 2, fp32) through the trainer and,
in the same processes, records the live model's logits on fixed tokens. This file doubles as
that torchrun worker (see the bottom). The other test_infer_* files reuse the run.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, run, tiny_ngpt, tiny_train, torchrun, train_cmd, write_ds_config, write_yaml

MODEL = tiny_ngpt()
TRAIN = tiny_train(6, log_interval=3)
MICRO, RANKS = 4, 2
PROBE = {"seed": 7, "batch": 3}  # the fixed tokens the worker feeds the live model


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_dataset) -> dict:
    """One ZeRO-2 x 2-rank fp32 run, shared by every test_infer_* module (cached on disk for the session)."""
    root = tmp_path_factory.getbasetemp() / "infer_trained"
    out = root / "run"
    result = {"root": root, "out": out, "data": tiny_dataset, "live": root / "live_logits.pt"}
    if not (root / "DONE").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        config = write_yaml(root / "tiny.yaml", MODEL, TRAIN)
        ds = write_ds_config(root / "z2.json", stage=2, bf16=False, micro=MICRO, accum=1)
        torchrun(Path(__file__), config, ds, tiny_dataset, out, result["live"], nproc=RANKS)
        (root / "DONE").write_text("ok")
    result["checkpoint"] = out / "checkpoints" / f"step_{TRAIN['max_steps']:08d}"
    result["summary"] = json.loads((out / "summary.json").read_text())
    return result


@pytest.fixture(scope="session")
def exported(trained) -> Path:
    from ngpt_ds.infer import export_model

    folder = trained["root"] / "export"
    if not (folder / "config.json").is_file():
        export_model(trained["out"], folder)
    return folder


def probe_tokens(vocab_size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(PROBE["seed"])
    return torch.randint(0, vocab_size, (PROBE["batch"], MODEL["seq_len"]), generator=g)


def test_export_gives_the_live_models_logits(trained, exported):
    from ngpt_ds.infer import load_export

    live = torch.load(trained["live"])
    loaded = load_export(exported, device="cpu")
    logits, _ = loaded.model(live["tokens"])
    diff = (logits - live["logits"]).abs().max().item()
    print(f"export vs live logits: max |diff| = {diff:.2e}")
    assert diff <= 1e-5
    # The probe is not degenerate: a trained model gives different logits from a fresh one.
    assert live["logits"].std() > 0.05


def test_export_folder_layout_and_unit_norm(trained, exported):
    from safetensors.torch import load_file

    from ngpt_ds.data.shards import load_dataset_meta, sha256_file
    from ngpt_ds.model import ModelConfig, build_model, sphere_matrices

    assert sorted(p.name for p in exported.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.model",
    ]
    config = json.loads((exported / "config.json").read_text())
    assert config["format"] == "ngpt_ds-export" and config["format_version"] == 1
    assert config["model"]["vocab_size"] == 512 and config["model"]["n_embd"] == 32
    meta = load_dataset_meta(trained["data"])
    assert config["tokenizer"]["sha256"] == meta.tokenizer_sha256 == sha256_file(exported / "tokenizer.model")
    assert config["training"]["step"] == TRAIN["max_steps"]
    assert config["training"]["zero_stage"] == 2 and config["training"]["world_size"] == RANKS
    assert "ZeRO-2" in config["training"]["weights"] and "float32" in config["training"]["weights"]
    weights = load_file(str(exported / "model.safetensors"))
    model = build_model(ModelConfig.from_dict(config["model"]))
    assert set(weights) == set(model.state_dict())
    assert all(t.dtype == torch.float32 for t in weights.values())
    # Every declared sphere matrix is unit norm along its declared dim (and only along it).
    matrices = sphere_matrices(model)
    assert len(matrices) == 2 + 4 * MODEL["n_layer"]
    assert config["sphere"]["matrices"] == {m.name: m.norm_dim for m in matrices}
    for m in matrices:
        w = weights[m.name]
        norms = w.norm(dim=m.norm_dim)
        assert (norms - 1).abs().max() < 1e-5, m.name
        if w.shape[0] != w.shape[1]:
            assert (w.norm(dim=1 - m.norm_dim) - 1).abs().max() > 1e-2, m.name
    assert config["sphere"]["max_norm_deviation"] < 1e-5
    assert "launch/generate.py" in (exported / "README.md").read_text()


def test_checkpoint_and_export_load_identically(trained, exported):
    from ngpt_ds.infer import load

    from_checkpoint = load(trained["checkpoint"], device="cpu")
    from_run_dir = load(trained["out"], device="cpu")  # a run directory: its newest complete checkpoint
    from_export = load(exported, device="cpu")
    assert from_checkpoint.kind == "checkpoint" and from_export.kind == "export"
    assert from_run_dir.source == trained["checkpoint"]
    for name, tensor in from_checkpoint.model.state_dict().items():
        assert torch.equal(tensor, from_export.model.state_dict()[name]), name
        assert torch.equal(tensor, from_run_dir.model.state_dict()[name]), name
    assert from_export.info["eval"] == {"batches": TRAIN["eval_batches"], "micro_batch": MICRO, "data_parallel": RANKS}


def test_saved_layout_is_read_from_deepspeeds_files(trained):
    """ngpt_ds.deepspeed_files reads how a checkpoint was cut from DeepSpeed's model states alone."""
    import deepspeed

    from ngpt_ds import deepspeed_files

    layout = deepspeed_files.saved_layout(trained["checkpoint"])
    assert (layout.zero_stage, layout.data_parallel, layout.tensor_parallel) == (2, RANKS, 1)
    assert layout.ds_version == deepspeed.__version__


def test_export_cli_round_trip(trained, tmp_path):
    out = tmp_path / "cli_export"
    proc = run([sys.executable, REPO / "launch/export.py", trained["checkpoint"], "--out", out])
    assert "exported nGPT 2 layers" in proc.stdout and "largest deviation" in proc.stdout
    proc = run([sys.executable, REPO / "launch/export.py", trained["checkpoint"], "--out", out], check=False)
    assert proc.returncode == 2 and "already exists" in proc.stderr and proc.stderr.startswith("error: ")
    # --overwrite replaces it; the weights are the checkpoint's, bit for bit.
    run([sys.executable, REPO / "launch/export.py", trained["out"], "--out", out, "--overwrite"])
    from ngpt_ds.infer import load, load_export

    exported, reference = load_export(out).model.state_dict(), load(trained["checkpoint"]).model.state_dict()
    assert all(torch.equal(exported[k], reference[k]) for k in reference)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_an_export_set_aside_by_a_killed_overwrite_is_put_back_first(trained, exported, tmp_path):
    """Fault: export --overwrite renamed the old export aside, then the new one in; a kill between the two
    left no `out` and the old export hidden as `.NAME.XXXX.old`, never cleaned. The swap is now one
    exchange, and an export's first act puts back what a killed one set aside: here `out` is missing and its
    old export waits as `.out.old-` and 32 hex digits (the name the fallback's kill leaves), so a plain export (no
    --overwrite) is refused as for any existing export, and no hidden folder is left either way."""
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer import export_model, load_export

    out = tmp_path / "out"
    shutil.copytree(exported, tmp_path / (".out.old-" + "0123abcd" * 4))
    with pytest.raises(NgptConfigError, match="already exists; choose another folder or pass --overwrite"):
        export_model(trained["out"], out)
    assert load_export(out).config == load_export(exported).config
    export_model(trained["out"], out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


_KILLED_EXPORT = """
import os, signal, sys
import ngpt_ds.infer.export as export
export._verify = lambda folder, state: os.kill(os.getpid(), signal.SIGKILL)  # killed with the weights written
export.export_model(sys.argv[1], sys.argv[2])
"""


def test_an_export_killed_mid_write_leaves_no_hidden_copy_after_the_next(trained, tmp_path):
    """Fault: export wrote into a tempfile.mkdtemp folder `.out.XXXXXXXX` beside `out`; a kill (SIGKILL, a
    job's time limit) left it, with the full weights, and no later export removed it: one hidden copy per
    kill. It now writes into a locked staging folder, which the next export of `out` removes."""
    from ngpt_ds.infer import export_model

    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", _KILLED_EXPORT, str(trained["out"]), str(out)], cwd=REPO)
    assert killed.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".out.") and (tmp_path / left[0] / "model.safetensors").is_file()
    export_model(trained["out"], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_export_folder_has_the_umasks_mode_not_0700(trained, tmp_path):
    """Fault: the export folder was a renamed tempfile.mkdtemp folder, mode 0700 whatever the umask: an
    export written to a shared folder was unreadable by the group (drwx------). It now has 0777 & ~umask."""
    from ngpt_ds.infer import export_model

    old = os.umask(0o022)
    try:
        out = export_model(trained["out"], tmp_path / "out")
    finally:
        os.umask(old)
    assert oct(out.stat().st_mode & 0o777) == oct(0o755)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors", "tokenizer.model"]
    # Fault (newcomer36): safetensors made the weights 0600, unreadable by the group that reads the rest.
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {
        name: oct(0o644) for name in ("README.md", "config.json", "model.safetensors", "tokenizer.model")
    }


def test_an_export_that_appears_while_exporting_is_not_replaced_without_overwrite(trained, exported, tmp_path):
    """Fault: `out` was checked only before the export; one written there meanwhile (a second export of
    the same --out) was silently replaced without --overwrite. Now, as ngpt-prepare's "appeared while
    preparing", the export stops with one line and the one that appeared is kept."""
    import ngpt_ds.infer.export as export
    from ngpt_ds.errors import NgptConfigError

    out, verify = tmp_path / "out", export._verify

    def verify_then_another_export_lands(folder, state):
        verify(folder, state)
        shutil.copytree(exported, out)
        (out / "other").write_text("the other export")

    export._verify = verify_then_another_export_lands
    try:
        with pytest.raises(NgptConfigError) as e:
            export.export_model(trained["out"], out)
    finally:
        export._verify = verify
    assert str(e.value) == f"{out} appeared while exporting; choose another folder or pass --overwrite"
    assert (out / "other").read_text() == "the other export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_export_that_lands_after_the_last_check_is_not_exchanged_away(trained, exported, tmp_path, monkeypatch):
    """Fault: between that check and the swap, a second export of the same --out that finished first was
    exchanged away (swap_in replaced any folder it found) without --overwrite. Now swap_in is told not to."""
    import ngpt_ds.infer.export as export
    from ngpt_ds.errors import NgptConfigError

    out, swap_in = tmp_path / "out", export.swap_in

    def another_export_lands_then_swap(folder, final, **kw):
        shutil.copytree(exported, out)
        (out / "other").write_text("the other export")
        swap_in(folder, final, **kw)

    monkeypatch.setattr(export, "swap_in", another_export_lands_then_swap)
    with pytest.raises(NgptConfigError, match=f"^{re.escape(str(out))} appeared while this job was writing it"):
        export.export_model(trained["out"], out)
    assert (out / "other").read_text() == "the other export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---- the torchrun worker ---------------------------------------------------------------------


def _worker(config: str, ds_config: str, data: str, out: str, live_path: str) -> None:
    """Train through the trainer on every rank, then record the live model's logits (rank 0)."""
    import torch.distributed as dist

    from ngpt_ds.train.builder import TrainOptions, init_process_group, prepare
    from ngpt_ds.train.loop import Trainer

    options = TrainOptions(deepspeed_config=ds_config, config=config, data=data, out=out, progress=False)
    prepared = prepare(options)
    init_process_group(prepared.dist_env, 300)
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        trainer = Trainer(prepared, options)
        trainer.fit()
        model = trainer.model.eval()
        tokens = probe_tokens(prepared.run.model.vocab_size)
        with torch.no_grad():
            logits, _ = model(tokens.to(trainer.device))
        if dist.get_rank() == 0:
            torch.save({"tokens": tokens, "logits": logits.float().cpu()}, live_path)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    _worker(*sys.argv[1:6])
    from ngpt_ds.distributed import exit_process

    exit_process(0, joined=True)  # no interpreter teardown under gloo's threads (its docstring)


@pytest.mark.parametrize("layout", ["tp2_zero1_fp32", "ws1_zero0_bf16"])
def test_other_checkpoint_layouts_load_and_export(layout, tmp_path, tiny_dataset):
    """Tensor-parallel shards (merged with ngpt_ds.parallel's plan after zero_to_fp32 per model-parallel
    rank) and ZeRO 0 in bf16 (the fp32 master copies, not the bf16 working weights)."""
    from ngpt_ds import deepspeed_files
    from ngpt_ds.infer import evaluate, export_model, load, load_export
    from ngpt_ds.model import max_norm_deviation

    tp = layout.startswith("tp2")
    train = {**TRAIN, "max_steps": 3, **({"tensor_parallel_size": 2} if tp else {})}
    config = write_yaml(tmp_path / "c.yaml", MODEL, train)
    ds = write_ds_config(tmp_path / "ds.json", stage=1 if tp else 0, bf16=not tp, micro=MICRO, accum=1)
    out = tmp_path / "run"
    torchrun(*train_cmd(config, ds, tiny_dataset, out), nproc=2 if tp else 1)
    loaded = load(out)
    assert max_norm_deviation(loaded.model) < 1e-5
    layout = deepspeed_files.saved_layout(loaded.source)
    assert (layout.zero_stage, layout.data_parallel, layout.tensor_parallel) == ((1, 1, 2) if tp else (0, 1, 1))
    if tp:
        assert loaded.info["tensor_parallel"] == 2 and "tensor-parallel x2, fp32 master" in loaded.info["weights"]
        assert sorted(p.name for p in loaded.source.glob("mp_rank_*")) == [
            "mp_rank_00_model_states.pt",
            "mp_rank_01_model_states.pt",
        ]
        (one_x,) = evaluate(loaded, tiny_dataset, multiples=[1])  # the trainer evaluated the sharded model
        assert one_x.loss == pytest.approx(json.loads((out / "summary.json").read_text())["val_loss"], abs=2e-6)
    else:
        assert loaded.info["weights"] == "fp32 master weights (ZeRO 0), float32"
        states = torch.load(loaded.source / "mp_rank_00_model_states.pt", weights_only=False)
        for name, tensor in loaded.model.state_dict().items():  # the bf16 working copy is the master's cast
            assert states["module"][name].dtype == torch.bfloat16
            assert torch.equal(tensor.bfloat16(), states["module"][name]), name
    folder = export_model(out, tmp_path / "export")
    reloaded = load_export(folder).model.state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in loaded.model.state_dict().items())
