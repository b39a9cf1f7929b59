"""DeepSpeed plumbing for the training loops: config, engine, ZeRO-aware checkpoints and state."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from cluster import choose_ds_accelerator

_STATE = "attune_state.json"
_BEST = "best_model.pt"
_TAG = "ckpt"
LOCK_CHECK_S = 10.0  # the longest a process holds torch's op build lock without building
LOCK_BUILD_S = 900.0  # the longest a build may hold it, where we cannot see the build


def ds_config(*, micro_batch_size: int, zero_stage: int, use_bf16: bool,
              grad_accum: int = 1, world_size: int = 1, offload: str = "none",
              param_persistence_threshold: Optional[int] = None) -> dict:
    """A DeepSpeed config: fp32 on CPU, bf16 on GPU, ZeRO at ``zero_stage``.

    ``offload="cpu"`` keeps the (partitioned) optimizer state in host memory (ZeRO-Offload).
    ``param_persistence_threshold``: under ZeRO-3, parameters with fewer elements stay whole
    on every rank (DeepSpeed's default is 100k, which for a tiny model is every matrix).
    """
    zero: dict = {"stage": zero_stage}
    if zero_stage in (1, 2):
        # One all-reduce per bucket beats per-rank reduce calls on gloo (CPU). Reducing 5M-element
        # buckets as backward fills them beat one reduction after backward (22 -> 25-27 samples/s,
        # MiniLM, 2 CPU workers). Measured with tests/benchmarks/train_overhead.py.
        zero.update(reduce_scatter=False, reduce_bucket_size=int(5e6), allgather_bucket_size=int(5e8),
                    overlap_comm=True, contiguous_gradients=True)
    if zero_stage >= 1 and offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
        if param_persistence_threshold is not None:
            zero["stage3_param_persistence_threshold"] = int(param_persistence_threshold)
    config = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_size * grad_accum * world_size,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        "bf16": {"enabled": use_bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if "offload_optimizer" in zero:  # our torch AdamW runs on the host copy (DeepSpeedCPUAdam is optional)
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def init_engine(model, optimizer, scheduler, config: dict):
    """``deepspeed.initialize`` with our torch optimizer (no fused-op build on CPU)."""
    build_cpu_ops()  # on CPU: a clear error here rather than deep inside DeepSpeed's comm set-up
    deepspeed = import_deepspeed()
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config,
        dist_init_required=False,
    )
    return engine, scheduler


def build_cpu_ops() -> bool:
    """Build (or load from the torch extensions cache) DeepSpeed's CPU shared-memory all-reduce op.

    DeepSpeed compiles it with the system C++ compiler the first time a CPU process group starts:
    about 50 s inside the first training run's workers. ``make install`` and the container image
    call this ahead of time. Returns whether an op was built; False off CPU, or on a platform the
    op does not support (DeepSpeed then uses plain gloo). Raises ``RuntimeError`` with what to do
    when the compiler is missing or the build fails.
    """
    if choose_ds_accelerator() != "cpu":
        return False
    import_deepspeed()
    from deepspeed.accelerator import get_accelerator
    from deepspeed.comm.torch import build_shm_op
    from torch.utils.cpp_extension import _get_build_directory

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        wait_for_build_lock(Path(_get_build_directory(builder.name, verbose=False)))
    try:
        return build_shm_op() is not None
    except Exception as exc:  # CalledProcessError (no compiler), RuntimeError (build error), ...
        raise RuntimeError(
            f"DeepSpeed could not build its CPU communication op (deepspeed_shm_comm): {exc}. "
            "CPU training with DeepSpeed compiles it once with a C++ compiler: install g++ "
            "(Debian: apt-get install g++), or point CXX at one, then run again."
        ) from exc


def wait_for_build_lock(build_dir: Path, poll_s: float = 0.5) -> None:
    """Wait while another process holds torch's build lock for an op, but not for a dead one.

    Every process that loads a JIT op takes the lock file ``<build_dir>/lock`` for as long as it
    checks the op (milliseconds once built) or builds it (ninja and the compiler run with
    ``build_dir`` as their working directory). A process killed while it holds the lock (a worker
    of a stopped tune trial, a killed worker) leaves the file, and torch then waits for it forever.
    So a lock older than ``LOCK_CHECK_S`` with no process working in ``build_dir`` is removed;
    where ``/proc`` cannot tell, one older than ``LOCK_BUILD_S``.
    """
    import logging
    import time

    lock = build_dir / "lock"
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        building = _working_in(build_dir)
        if (age > LOCK_CHECK_S and building is False) or age > LOCK_BUILD_S:
            logging.getLogger("attune.train").warning(
                "removing %s, %.0f s old with no build running: a process was killed while it held it", lock, age)
            lock.unlink(missing_ok=True)
            return
        time.sleep(poll_s)


def _working_in(directory: Path) -> Optional[bool]:
    """Whether any process has ``directory`` as its working directory; None without ``/proc``."""
    proc = Path("/proc")
    if not (proc / "self" / "cwd").exists():
        return None
    target = directory.resolve()
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == target:
                    return True
            except OSError:  # gone, or another user's
                continue
    return False


def import_deepspeed():
    """``import deepspeed``, without the MLflow import DeepSpeed's autotuner makes whenever MLflow is
    installed: about 1.7 s of every training worker's start-up, for a tool our loops never run
    (and only ``registry/`` talks to MLflow). Later imports of MLflow in the process still work."""
    import sys

    if "deepspeed" in sys.modules or "mlflow" in sys.modules:
        import deepspeed

        return deepspeed
    sys.modules["mlflow"] = None  # `import mlflow` raises ImportError while this is set
    try:
        import deepspeed
    finally:
        del sys.modules["mlflow"]
    return deepspeed


def gather_state_dict(engine, zero_stage: int, rank: int) -> Optional[dict]:
    """The full module state on rank 0 (CPU tensors); None on other ranks.

    Under ZeRO-3 parameters are partitioned, so every rank must enter the gather.
    """
    module = engine.module
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return _cpu_state(module) if rank == 0 else None
    return _cpu_state(module) if rank == 0 else None


def _cpu_state(module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def save_checkpoint(engine, directory: Path, rank: int, state: dict, best_state: Optional[dict]) -> None:
    """Every rank writes its ZeRO shard; rank 0 adds the loop state and the best weights."""
    import torch

    engine.save_checkpoint(str(directory), tag=_TAG)
    if rank == 0:
        (directory / _STATE).write_text(json.dumps(state))
        if best_state is not None:
            torch.save(best_state, directory / _BEST)


def load_checkpoint(engine, directory: Path) -> tuple[dict, Optional[dict]]:
    """Restore engine, optimizer and scheduler; return the loop state and best weights."""
    import torch

    engine.load_checkpoint(str(directory), tag=_TAG)
    state = read_loop_state(directory)
    best_path = directory / _BEST
    best = torch.load(best_path, map_location="cpu") if best_path.exists() else None
    return state, best


def read_loop_state(directory: Path) -> dict:
    """The loop state a checkpoint holds (``epoch``, ``best_val_macro_f1``, ...), without loading it."""
    return json.loads((Path(directory) / _STATE).read_text())


def use_gpu_here() -> bool:
    import torch

    return torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") == "cuda"
