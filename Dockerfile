# ngpt_ds on NVIDIA's PyTorch image: CUDA build of torch, DeepSpeed with its ops prebuilt,
# OpenMPI + mpi4py, pdsh and openssh for DeepSpeed's launcher, this package, a non-root user.
#
#   docker build -t ngpt_ds .
#   mkdir -p runs data
#   docker run --gpus all --ipc=host --user "$(id -u):$(id -g)" -v "$PWD/runs:/opt/ngpt_ds/runs" -v "$PWD/data:/data" ngpt_ds
#
# Volumes: /data (datasets; the default corpus is cached in /data/cache) and /opt/ngpt_ds/runs
# (each run's checkpoints/, tensorboard/ and metrics). The default command is the README's main
# command; pass any other, e.g. `... ngpt_ds deepspeed launch/train.py --deepspeed_config
# ds_configs/zero2.json --config ngpt_0.5b --data /data/owt`. On Slurm, use the image through
# launch/slurm/train.sbatch (pyxis/enroot or Apptainer flags are in its header).
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:24.12-py3
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    NGPT_DS_CACHE=/data/cache

WORKDIR /opt/ngpt_ds
COPY . .

# The README's install command for cluster images (it keeps the image's CUDA torch). DS_BUILD_*
# prebuild the DeepSpeed ops ngpt_ds can use: CPU Adam (ZeRO-Offload), fused Adam/LAMB, utils;
# the build has no GPU, so the CUDA architectures are named.
RUN DS_BUILD_CPU_ADAM=1 DS_BUILD_FUSED_ADAM=1 DS_BUILD_FUSED_LAMB=1 DS_BUILD_UTILS=1 TORCH_CUDA_ARCH_LIST="8.0 8.6 8.9 9.0" bash launch/setup.sh --cluster \
    && rm -rf /var/lib/apt/lists/* \
    && python -c "import deepspeed, ngpt_ds, mpi4py" \
    && ds_report

# Runs as user ngpt (uid/gid 10001) by default. Bind-mounted host folders belong to the host user, whom
# uid 10001 cannot write as: `docker run --user "$(id -u):$(id -g)"` runs as that user, who has no entry
# in /etc/passwd here, so HOME is a folder any uid can write (pip, HF, Triton and torch caches live under
# it); ngpt's own home keeps its modes, which ssh's StrictModes checks.
RUN groupadd --gid 10001 ngpt \
    && useradd --uid 10001 --gid 10001 --create-home --shell /bin/bash ngpt \
    && mkdir -m 1777 /home/any-user \
    && mkdir -p /data/cache /opt/ngpt_ds/runs \
    && chown -R 10001:10001 /data /opt/ngpt_ds/runs
ENV HOME=/home/any-user
USER 10001:10001
VOLUME ["/data", "/opt/ngpt_ds/runs"]

# PID 1 passes docker stop's SIGTERM (and Ctrl-C) on to every process of the run and exits only
# when all have ended: the deepspeed runner dies of SIGTERM at once while its ranks still save.
# Give the save time: docker run --stop-timeout 60 (Docker's default is 10 s), or lower
# train.stop_grace_s below it (README "Stopping a run").
ENTRYPOINT ["python3", "/opt/ngpt_ds/launch/entrypoint.py"]
CMD ["deepspeed", "launch/train.py", "--deepspeed_config", "ds_configs/zero2.json"]
