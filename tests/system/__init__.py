"""Harness for the launch tests: local Slurm cluster, local sshd."""
