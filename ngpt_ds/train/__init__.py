"""Training with DeepSpeed: configs, the engine, the hypersphere hook, the loop, checkpoints, stopping.

Nothing is imported here (each module imports DeepSpeed or torch.distributed only where it needs them).
This file makes ngpt_ds.train a regular package, one that setup.py's find_packages puts into the wheel.
"""
