"""Devices, ranks, seeds and threads, resolved in one place.

Every command that runs a model asks this module which device to use
(:func:`resolve_device`), where this process stands in a ``torchrun`` job
(:func:`distributed_context`, :func:`local_rank`, :func:`local_world_size`), how to seed
every random generator (:func:`seed_everything`) and how many CPU threads torch may use
(:func:`set_threads`). Importing this module imports neither torch nor numpy; the
functions import them when called.

Devices are written ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. ``auto`` is
CUDA when available, else Apple's MPS when available, else the CPU. Plain ``cuda`` (and
``auto`` on a CUDA machine) is this process's GPU under ``torchrun``: ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from exaslide.errors import ExaslideError

if TYPE_CHECKING:
    import torch

#: The device strings :func:`resolve_device` accepts.
DEVICE_FORMS = ("auto", "cpu", "cuda", "cuda:N", "mps")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")


class RuntimeSetupError(ExaslideError, ValueError):
    """A device, rank, seed or thread count that cannot be used (also a ``ValueError``,
    as :func:`distributed_context` raised before)."""


class DeviceError(RuntimeSetupError):
    """A device string that is not one of :data:`DEVICE_FORMS`, or a device this machine
    does not have."""


def device_setting(value: Any) -> str:
    """A config file's ``device`` value in its normal form (``"CUDA:1"`` ->
    ``"cuda:1"``), for pydantic validators.

    Raises:
        ValueError: not a device form (the message lists the accepted ones).
    """
    try:
        kind, index = parse_device(value)
    except DeviceError:
        raise ValueError(f"expected one of {', '.join(DEVICE_FORMS)}") from None
    return kind if index is None else f"{kind}:{index}"


def parse_device(device: Any) -> tuple[str, int | None]:
    """``(kind, index)`` of a device string or ``torch.device``, checking only the form
    (not whether this machine has it): ``"cuda:1"`` -> ``("cuda", 1)``.

    Raises:
        DeviceError: not one of :data:`DEVICE_FORMS`.
    """
    if type(device).__name__ == "device" and hasattr(device, "type"):  # a torch.device
        text = device.type if device.index is None else f"{device.type}:{device.index}"
    elif isinstance(device, str):
        text = device.strip().lower()
    else:
        text = None
    match = _DEVICE_RE.match(text) if text is not None else None
    if match is None or (match[2] is not None and match[1] != "cuda"):
        raise DeviceError(f"device {device!r} is not one of {', '.join(DEVICE_FORMS)} "
                          "(N: a GPU number, from 0)")
    return match[1], None if match[2] is None else int(match[2])


def resolve_device(device: Any = "auto") -> torch.device:
    """The ``torch.device`` to run on (see the module docstring for the forms).

    Raises:
        DeviceError: an unknown form, a GPU this machine does not have (CUDA or MPS not
            available, ``cuda:N`` past the device count, a ``LOCAL_RANK`` with no GPU).
    """
    import torch

    kind, index = parse_device(device)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not mps_available():
            raise DeviceError(f"device {device!r}: MPS is not available on this machine; "
                              "use --device cpu or auto")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {device!r}: CUDA is not available on this machine; "
                          "use --device cpu or auto")
    count = torch.cuda.device_count()
    if index is None:
        index = local_rank()
        if index >= count:
            raise DeviceError(f"device {device!r}: LOCAL_RANK={index} but this machine has "
                              f"{count} CUDA device(s); start at most {count} process(es) "
                              "per node")
    elif index >= count:
        raise DeviceError(f"device {device!r}: this machine has {count} CUDA device(s) "
                          f"(cuda:0 to cuda:{count - 1})")
    return torch.device("cuda", index)


def mps_available() -> bool:
    """True when torch can use Apple's MPS backend here."""
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _env_int(name: str, default: int, minimum: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise RuntimeSetupError(f"environment variable {name}={value} is not an integer "
                                f">= {minimum}; unset it or let torchrun set it")
    return number


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``, set by ``torchrun``; else 0)."""
    return _env_int("LOCAL_RANK", 0, 0)


def local_world_size() -> int:
    """Processes on this node (``LOCAL_WORLD_SIZE``, set by ``torchrun``; else 1)."""
    return _env_int("LOCAL_WORLD_SIZE", 1, 1)


def distributed_context(rank: int | None = None,
                        world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: the given values, else ``torch.distributed``'s when it is
    initialised, else the ``RANK`` / ``WORLD_SIZE`` variables ``torchrun`` sets, else
    ``(0, 1)``.

    Raises:
        RuntimeSetupError: a rank outside the world size, or a malformed variable.
    """
    if rank is None or world_size is None:
        found = _initialised_group()
        if found is None:
            found = (_env_int("RANK", 0, 0), _env_int("WORLD_SIZE", 1, 1))
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise RuntimeSetupError(f"rank {rank} is not within world size {world_size}")
    return rank, world_size


def _initialised_group() -> tuple[int, int] | None:
    """``(rank, world_size)`` of an initialised process group; None without one (torch
    is only looked at when something has imported it already)."""
    import sys

    if "torch" not in sys.modules:
        return None
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every GPU).

    Rank 0 uses ``seed`` itself; another rank a seed derived from ``(seed, rank)``, so
    that ranks draw different numbers (dropout, for example) yet every run repeats.

    Returns:
        The seed used on this rank.

    Raises:
        RuntimeSetupError: a seed or rank that is not a non-negative integer.
    """
    import random

    import numpy as np
    import torch

    for name, value in (("seed", seed), ("rank", rank)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RuntimeSetupError(f"{name} must be a non-negative integer, got {value!r}")
    used = seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    random.seed(used)
    np.random.seed(used % 2**32)
    torch.manual_seed(used)
    return used


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """Torch CPU threads for this process: ``OMP_NUM_THREADS`` when set (``torchrun``
    sets 1 for several processes per node), else this node's CPUs shared among its
    processes (``cpu_count() // local_world_size()``, at least 1)."""
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return _env_int("OMP_NUM_THREADS", 1, 1)
    return max(1, cpu_count() // local_world_size())


def set_threads(n: int | None = None) -> int:
    """Let torch use ``n`` CPU threads (None: :func:`default_threads`); returns ``n``.

    Raises:
        RuntimeSetupError: ``n`` is not a positive integer.
    """
    import torch

    n = default_threads() if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise RuntimeSetupError(f"threads must be a positive integer, got {n!r}")
    torch.set_num_threads(n)
    return n
