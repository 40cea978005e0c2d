"""TensorBoard in a real browser: `tensorboard --logdir` on a run's folder, opened in headless Chromium.

Chromium comes from apt (`launch/setup.sh --test` installs it; Debian's package `chromium`).
The browser fetches TensorBoard's scalar tag list (`/data/plugin/scalars/tags`, what the
dashboard itself asks for) and must find the nGPT health tags; it also renders the scalars page
to a PNG, which must not be blank. NGPT_DS_TENSORBOARD_SCREENSHOT=FILE keeps that PNG (the README's
docs/images/tensorboard_scalars.png was made this way).
"""

import html
import json
import os
import re
import shutil
import subprocess
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import (
    free_port,
    require_system,
    run,
    tiny_ngpt,
    tiny_train,
    torchrun,
    train_cmd,
    write_ds_config,
    write_yaml,
)

MODEL = tiny_ngpt()
TRAIN = tiny_train(8, eval_interval=4, eval_batches=1)
HEALTH_TAGS = {
    "ngpt/max_norm_deviation",
    "ngpt/s_z_mean",
    "ngpt/alpha_attn/layer_00",
    "ngpt/alpha_mlp/layer_01",
    "ngpt/s_qk/layer_01",
}


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                *args,
            ],
            timeout=300,
        )


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory, tiny_dataset):
    """A finished 8-step nGPT run and a TensorBoard serving its folder on 127.0.0.1."""
    require_system(chromium() is not None, "headless Chromium (apt-get install chromium) is not installed")
    tmp = tmp_path_factory.mktemp("tensorboard")
    config = write_yaml(tmp / "tiny.yaml", MODEL, TRAIN)
    ds = write_ds_config(tmp / "z0.json", stage=0, bf16=False, micro=4, accum=1)
    out = tmp / "run"
    torchrun(*train_cmd(config, ds, tiny_dataset, out), nproc=1)
    port = free_port()
    # Started in the run's folder with a relative --logdir, so the page names the folder, not a path.
    server = subprocess.Popen(
        [
            Path(sysconfig.get_path("scripts")) / "tensorboard",
            "--logdir",
            "tensorboard",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=out,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # until it answers (it loads the event files first); bounded, not timed
            if server.poll() is not None:
                pytest.fail(f"tensorboard exited with {server.returncode}: {server.stderr.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/data/plugin/scalars/tags", timeout=5) as reply:
                    if json.loads(reply.read()):
                        break
            except OSError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_browser_lists_the_ngpt_health_tags(dashboard):
    page = browser("--dump-dom", f"{dashboard}/data/plugin/scalars/tags").stdout
    body = re.search(r"<pre[^>]*>(.*?)</pre>", page, re.S)
    assert body, page[:500]
    runs = json.loads(html.unescape(body.group(1)))
    assert list(runs) == ["."]  # one run: the --logdir folder itself
    tags = set(runs["."])
    assert HEALTH_TAGS <= tags, HEALTH_TAGS - tags
    assert {"train/loss", "eval/loss", "train/lr"} <= tags


def test_the_scalars_page_renders(dashboard, tmp_path):
    from matplotlib.image import imread

    shot = tmp_path / "tensorboard_scalars.png"
    browser(
        "--window-size=1400,900",
        "--virtual-time-budget=20000",
        f"--screenshot={shot}",
        f"{dashboard}/?fastChart=false#scalars&tagFilter=ngpt%2F",
    )  # the nGPT health charts
    image = imread(shot)
    assert image.shape[:2] == (900, 1400)
    assert image[..., :3].std() > 0.05  # not a blank page
    if os.environ.get("NGPT_DS_TENSORBOARD_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["NGPT_DS_TENSORBOARD_SCREENSHOT"])
