"""gitopsd's `nvidia` backend plugin: trainings on this host's NVIDIA GPUs, placed, leased and watched via NVML.

Registered as entry point `nvidia` in group `gitopsd.backends` (see `gitopsd_nvidia.backend`). `pynvml` is only
imported by `gitopsd_nvidia.nvml`, and only when NVML is first used, so importing this package never fails on a
host without a GPU.
"""
