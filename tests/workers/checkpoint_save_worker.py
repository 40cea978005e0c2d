"""Worker for tests/test_checkpoint_integrity.py: one save through ngpt_ds.train.checkpoint.save with a
stand-in engine, in a process the test can SIGKILL at a chosen point of the save.

The stand-in writes the files DeepSpeed's save_checkpoint would (a model file, an optimizer file and,
when asked to, the `latest` pointer, last, as DeepSpeed does), filled with one repeated byte so the
test can tell which save a file came from. --hang mid: stop halfway through the optimizer file;
--hang end: stop after everything, `latest` included, before save_checkpoint returns.

    python checkpoint_save_worker.py OUT STEP PAYLOAD_BYTE PORT [--hang mid|end]
    torchrun --nproc_per_node 2 checkpoint_save_worker.py OUT STEP PAYLOAD_BYTE 0 [--record FILE]

Under torchrun (PORT unused) rank 0 writes the model file and each rank its own optimizer file, as
DeepSpeed's ZeRO 1/2 does. --record FILE: each rank writes the paths of the files it hashed to FILE.rank<R>.
--unreadable-on-rank-1: reading any file for its digest fails on rank 1 (EIO); each rank prints the
CheckpointWriteError it gets. --finish-universal CONVERTED TARGET SOURCE: instead of a save, seal a
finished conversion with checkpoint.finish_universal_on_all_ranks; each rank prints the problem it
gets, or "placed".
"""

import argparse
import errno
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ngpt_ds.train import checkpoint


class StandInEngine:
    def __init__(self, payload: bytes, hang: str | None):
        self.module = torch.nn.Linear(4, 4)
        self.payload, self.hang = payload, hang
        self.rank = dist.get_rank()

    def _wait_for_kill(self, where: str) -> None:
        print(f"hanging {where}", flush=True)
        time.sleep(600)

    def save_checkpoint(self, save_dir, tag, client_state=None, save_latest=True):
        folder = Path(save_dir) / tag
        folder.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            (folder / "mp_rank_00_model_states.pt").write_bytes(self.payload * 1000)
        with open(folder / f"zero_pp_rank_{self.rank}_mp_rank_00_optim_states.pt", "wb") as f:
            f.write(self.payload * 1500)
            if self.hang == "mid":
                f.flush()
                self._wait_for_kill("mid")
            f.write(self.payload * 1500)
        if save_latest and self.rank == 0:
            (Path(save_dir) / "latest").write_text(tag)
        if self.hang == "end":
            self._wait_for_kill("end")
        dist.barrier()  # DeepSpeed's save ends in one: every rank's files are written after it
        return True


def report(line: str) -> None:
    """One write per line: print's separate newline write could interleave with the other rank's line."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def save_and_report(out: Path, step: int, payload: str) -> None:
    """One checkpoint.save of `step` into `out` by a stand-in engine whose files repeat `payload` (the workers of
    the save and resume fault tests); each rank reports the folder it saved or the CheckpointWriteError it got."""
    rank = dist.get_rank()
    engine = StandInEngine(payload.encode(), None)
    try:
        path = checkpoint.save(engine, out, step, {}, keep=5, config_yaml="model: {}\n")
    except checkpoint.CheckpointWriteError as err:
        report(f"rank {rank} got: {err}")
    else:
        report(f"rank {rank} saved: {path.name}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("step", type=int)
    parser.add_argument("payload")
    parser.add_argument("port", type=int)
    parser.add_argument("--hang", choices=("mid", "end"))
    parser.add_argument("--record", type=Path)
    parser.add_argument("--unreadable-on-rank-1", action="store_true")
    parser.add_argument("--finish-universal", nargs=3, type=Path, metavar=("CONVERTED", "TARGET", "SOURCE"))
    args = parser.parse_args()
    if "TORCHELASTIC_RUN_ID" in os.environ:  # torchrun: env:// rendezvous
        dist.init_process_group("gloo")
    else:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=0, world_size=1)
    hashed: list[str] = []
    if args.record is not None:
        from ngpt_ds.train import manifest

        digest = manifest._digest

        def recording_digest(path: Path) -> str:
            hashed.append(str(path))
            return digest(path)

        manifest._digest = recording_digest
    if args.unreadable_on_rank_1 and dist.get_rank() == 1:
        from ngpt_ds.train import manifest

        def failing_digest(path: Path) -> str:
            raise OSError(errno.EIO, "Input/output error", str(path))

        manifest._digest = failing_digest
    engine = StandInEngine(args.payload.encode(), args.hang)
    if args.finish_universal is not None:
        problem = checkpoint.finish_universal_on_all_ranks(*args.finish_universal)
        report(f"rank {dist.get_rank()} got: {problem or 'placed'}")
    else:
        save(engine, args)
    if args.record is not None:
        Path(f"{args.record}.rank{dist.get_rank()}").write_text(json.dumps(hashed))
    dist.destroy_process_group()


def save(engine: StandInEngine, args: argparse.Namespace) -> None:
    try:
        path = checkpoint.save(engine, args.out, args.step, {}, keep=5, config_yaml="model: {}\n")
    except checkpoint.CheckpointWriteError as err:
        report(f"rank {dist.get_rank()} got: {err}")
    else:
        print(f"saved {path}", flush=True)


if __name__ == "__main__":
    main()
    from ngpt_ds.distributed import exit_process

    exit_process(0, joined=True)  # without interpreter teardown while gloo threads may run
