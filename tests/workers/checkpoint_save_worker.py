"""Worker for tests/test_checkpoint_integrity.py: one save through ngpt_ds.train.checkpoint.save with a
stand-in engine, in a process the test can SIGKILL at a chosen point of the save.

The stand-in writes the files DeepSpeed's save_checkpoint would (a model file, an optimizer file and,
when asked to, the `latest` pointer, last, as DeepSpeed does), filled with one repeated byte so the
test can tell which save a file came from. --hang mid: stop halfway through the optimizer file;
--hang end: stop after everything, `latest` included, before save_checkpoint returns.

    python checkpoint_save_worker.py OUT STEP PAYLOAD_BYTE PORT [--hang mid|end]
"""

import argparse
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ngpt_ds.train import checkpoint


class StandInEngine:
    def __init__(self, payload: bytes, hang: str | None):
        self.module = torch.nn.Linear(4, 4)
        self.payload, self.hang = payload, hang

    def _wait_for_kill(self, where: str) -> None:
        print(f"hanging {where}", flush=True)
        time.sleep(600)

    def save_checkpoint(self, save_dir, tag, client_state=None, save_latest=True):
        folder = Path(save_dir) / tag
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "mp_rank_00_model_states.pt").write_bytes(self.payload * 1000)
        with open(folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt", "wb") as f:
            f.write(self.payload * 1500)
            if self.hang == "mid":
                f.flush()
                self._wait_for_kill("mid")
            f.write(self.payload * 1500)
        if save_latest:
            (Path(save_dir) / "latest").write_text(tag)
        if self.hang == "end":
            self._wait_for_kill("end")
        return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("step", type=int)
    parser.add_argument("payload")
    parser.add_argument("port", type=int)
    parser.add_argument("--hang", choices=("mid", "end"))
    args = parser.parse_args()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=0, world_size=1)
    engine = StandInEngine(args.payload.encode(), args.hang)
    path = checkpoint.save(engine, args.out, args.step, {}, keep=5, config_yaml="model: {}\n")
    print(f"saved {path}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    from ngpt_ds.distributed import exit_process

    exit_process(0, joined=True)  # without interpreter teardown while gloo threads may run
