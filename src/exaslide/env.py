"""What an exaslide environment holds, for a bug report or a cluster admin
(``exaslide env``): versions, working image codecs, installed extras, GPUs, the cache,
the machine, and with a Dask scheduler every worker's exaslide version.

:func:`collect` returns the JSON form; its keys are stable (``schema`` is bumped when one
changes meaning or goes away; new keys may be added) and documented in docs/install.md.
Nothing here writes anything or creates a folder; a part that cannot be read is ``null``
(with an ``error`` string where it failed), never an exception.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

SCHEMA = 1

#: Distributions whose versions are reported (``null`` when not installed).
PACKAGES = ("numpy", "tifffile", "imagecodecs", "openslide-python", "openslide-bin",
            "opencv-python-headless", "pillow", "shapely", "pyarrow", "dask", "distributed",
            "fsspec", "torch", "torchvision", "faiss-cpu", "timm", "scikit-learn",
            "starlette", "uvicorn")

#: Codec name -> imagecodecs' encode/decode functions, tried on a small image.
CODECS = {"jpeg": "jpeg8", "jpeg2000": "jpeg2k", "jpegxl": "jpegxl", "jpegxr": "jpegxr",
          "webp": "webp", "png": "png", "lzw": "lzw", "deflate": "zlib", "zstd": "zstd",
          "lzma": "lzma", "packbits": "packbits"}


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]


def exaslide_info() -> dict[str, Any]:
    import exaslide

    return {"version": exaslide.__version__, "path": str(Path(exaslide.__file__).parent)}


def python_info() -> dict[str, Any]:
    return {"version": platform.python_version(), "implementation":
            platform.python_implementation(), "executable": sys.executable}


def platform_info() -> dict[str, Any]:
    return {"system": platform.system(), "release": platform.release(),
            "machine": platform.machine()}


def openslide_info() -> dict[str, Any]:
    """OpenSlide's C library and Python binding versions."""
    out: dict[str, Any] = {"library": None, "python": _version("openslide-python"),
                           "error": None}
    try:
        import openslide

        out["library"] = getattr(openslide, "__library_version__", None)
    except Exception as exc:  # a missing or broken libopenslide
        out["error"] = _one_line(exc)
    return out


def codecs_info() -> dict[str, Any]:
    """imagecodecs' version and, per codec, whether a small image survives a round trip
    through it (``True``), fails (``False``) or the codec is not built in (``None``)."""
    out: dict[str, Any] = {"imagecodecs": _version("imagecodecs"),
                           "tifffile": _version("tifffile"), "works": {}}
    try:
        import imagecodecs
        import numpy as np
    except Exception as exc:
        out["error"] = _one_line(exc)
        return out
    image = (np.arange(16 * 16 * 3, dtype=np.uint16) % 251).astype(np.uint8).reshape(16, 16, 3)
    for name, codec in CODECS.items():
        encode = getattr(imagecodecs, f"{codec}_encode", None)
        decode = getattr(imagecodecs, f"{codec}_decode", None)
        check = getattr(imagecodecs, f"{codec.upper()}", None)
        if encode is None or decode is None or (check is not None and
                                                not getattr(check, "available", True)):
            out["works"][name] = None
            continue
        try:
            data = image if codec not in ("lzw", "zlib", "zstd", "lzma", "packbits") \
                else image.tobytes()
            decoded = decode(encode(data))
            if codec in ("lzw", "zlib", "zstd", "lzma", "packbits"):
                ok = bytes(decoded) == image.tobytes()
            else:
                ok = np.asarray(decoded).shape[:2] == image.shape[:2]
            out["works"][name] = bool(ok)
        except Exception:
            out["works"][name] = False
    return out


def torch_info() -> dict[str, Any] | None:
    """torch's version, CUDA, cuDNN and NCCL versions and each GPU with its memory; None
    without torch. The GPU fields are null (and ``gpus`` empty) without a GPU."""
    if importlib.util.find_spec("torch") is None:
        return None
    out: dict[str, Any] = {"version": None, "cuda_build": None, "cuda_available": False,
                           "cudnn": None, "nccl": None, "gpus": [], "error": None}
    try:
        import torch

        out["version"] = torch.__version__
        out["cuda_build"] = torch.version.cuda
        out["cuda_available"] = bool(torch.cuda.is_available())
        if out["cuda_available"]:
            out["cudnn"] = torch.backends.cudnn.version()
            try:
                out["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
            except Exception:
                out["nccl"] = None
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                out["gpus"].append({"index": index, "name": props.name,
                                    "memory_bytes": int(props.total_memory),
                                    "capability": f"{props.major}.{props.minor}"})
    except Exception as exc:
        out["error"] = _one_line(exc)
    return out


def _folder_bytes(folder: Path) -> tuple[int, int]:
    total = files = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
                files += 1
            except OSError:
                pass
    return total, files


def cache_info() -> dict[str, Any]:
    """The disk cache of remote files: folder, whether it exists, bytes and files in it,
    its size limit and the free space of its disk (read only: nothing is created)."""
    from exaslide.storage.disk_cache import default_cache_bytes, default_cache_dir

    out: dict[str, Any] = {"dir": None, "exists": False, "bytes": 0, "files": 0,
                           "limit_bytes": None, "free_bytes": None, "error": None}
    try:
        folder = default_cache_dir()
    except Exception as exc:  # e.g. EXASLIDE_CACHE_DIR=~nosuchuser/x
        out["error"] = _one_line(exc)
        return out
    out["dir"], out["exists"] = str(folder), folder.is_dir()
    try:
        out["limit_bytes"] = default_cache_bytes()
    except Exception as exc:  # a bad EXASLIDE_CACHE_SIZE: reported, not raised
        out["error"] = _one_line(exc)
    if out["exists"]:
        out["bytes"], out["files"] = _folder_bytes(folder)
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    with contextlib.suppress(OSError):
        out["free_bytes"] = shutil.disk_usage(probe).free
    return out


def machine_info() -> dict[str, Any]:
    """CPUs (all, and usable by this process) and memory (total and available)."""
    out: dict[str, Any] = {"cpus": os.cpu_count(), "cpus_usable": None,
                           "memory_bytes": None, "memory_available_bytes": None}
    with contextlib.suppress(AttributeError, OSError):
        out["cpus_usable"] = len(os.sched_getaffinity(0))
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
        out["memory_bytes"] = int(fields["MemTotal"].split()[0]) * 1024
        out["memory_available_bytes"] = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    return out


def _worker_versions() -> dict[str, Any]:  # runs on each Dask worker
    """The worker's exaslide and Python versions (exaslide: null when not installed);
    imports nothing of exaslide, so it runs on a worker without it."""
    import importlib.metadata as metadata
    import platform as worker_platform

    try:
        version = metadata.version("exaslide")
    except metadata.PackageNotFoundError:
        version = None
    return {"exaslide": version, "python": worker_platform.python_version()}


async def _query_cluster(scheduler: str, timeout: float) -> tuple[dict, dict]:
    from distributed import Client

    async with Client(scheduler, asynchronous=True, timeout=timeout) as client:
        identity = await client.scheduler.identity(n_workers=-1)
        versions = await client.run(_worker_versions, on_error="return")
    return identity, versions


def cluster_info(scheduler: str, timeout: float = 10.0) -> dict[str, Any]:
    """Each worker of the Dask cluster at ``scheduler`` with its exaslide and Python
    versions, and the workers whose exaslide differs from this one (``mismatches``; a
    worker without exaslide counts, with ``exaslide: null``).

    Raises:
        EnvError: the address is malformed, or the scheduler does not answer within
            ``timeout`` seconds (the whole query, not only the connection).
    """
    import asyncio
    import warnings

    import exaslide
    from exaslide.errors import EnvError

    try:
        identity, versions = asyncio.run(
            asyncio.wait_for(_query_cluster(scheduler, timeout), timeout))
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        # a client that never connected is closed by its finaliser, which complains
        # that its close coroutine is never awaited: noise next to the one-line error
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited",
                                category=RuntimeWarning)
        reason = "no answer" if isinstance(exc, TimeoutError) else _one_line(exc)
        raise EnvError(f"{scheduler}: cannot reach the Dask scheduler within {timeout:g} s "
                       f"({reason})") from exc
    workers = []
    for address, worker in sorted(identity.get("workers", {}).items()):
        found = versions.get(address)
        if not isinstance(found, dict):  # the function failed there
            found = {"exaslide": None, "python": None,
                     "error": _one_line(found) if isinstance(found, BaseException) else None}
        workers.append({"address": address, "name": str(worker.get("name")),
                        "nthreads": worker.get("nthreads"),
                        "memory_limit_bytes": worker.get("memory_limit"),
                        "exaslide": found.get("exaslide"), "python": found.get("python"),
                        "mismatch": found.get("exaslide") != exaslide.__version__})
    return {"scheduler": scheduler, "workers": workers,
            "mismatches": [w["address"] for w in workers if w["mismatch"]]}


def collect(scheduler: str | None = None) -> dict[str, Any]:
    """Everything ``exaslide env --json`` prints (see the module docstring)."""
    from exaslide.extras import installed_extras

    return {
        "schema": SCHEMA,
        "exaslide": exaslide_info(),
        "python": python_info(),
        "platform": platform_info(),
        "openslide": openslide_info(),
        "codecs": codecs_info(),
        "extras": installed_extras(),
        "packages": {name: _version(name) for name in PACKAGES},
        "torch": torch_info(),
        "dask": {"dask": _version("dask"), "distributed": _version("distributed")},
        "cluster": cluster_info(scheduler) if scheduler else None,
        "cache": cache_info(),
        "machine": machine_info(),
    }


def _size(value: int | None) -> str:
    from exaslide.storage import format_size

    return "unknown" if value is None else format_size(value)


def format_text(env: dict[str, Any]) -> str:
    """The human-readable form of :func:`collect`'s result."""
    lines = [f"exaslide {env['exaslide']['version']} ({env['exaslide']['path']})",
             f"python {env['python']['version']} ({env['python']['executable']})",
             f"platform {env['platform']['system']} {env['platform']['release']} "
             f"{env['platform']['machine']}"]
    slide = env["openslide"]
    lines.append(f"openslide library {slide['library'] or 'not found'}, python binding "
                 f"{slide['python'] or 'not installed'}"
                 + (f" ({slide['error']})" if slide.get("error") else ""))
    codecs = env["codecs"]
    works = codecs.get("works", {})
    status = ", ".join(f"{name} {'yes' if ok else 'NO' if ok is False else '-'}"
                       for name, ok in works.items())
    lines.append(f"tifffile {codecs['tifffile']}, imagecodecs {codecs['imagecodecs']}: "
                 f"{status}")
    extras = env["extras"]
    lines.append("extras: " + ", ".join(f"{name} {'yes' if ok else 'no'}"
                                         for name, ok in extras.items()))
    torch = env["torch"]
    if torch is None:
        lines.append("torch: not installed (pip install 'exaslide[train]')")
    else:
        lines.append(f"torch {torch['version']} (CUDA build {torch['cuda_build'] or 'none'}); "
                     f"CUDA available: {'yes' if torch['cuda_available'] else 'no'}"
                     + (f", cuDNN {torch['cudnn']}, NCCL {torch['nccl']}"
                        if torch["cuda_available"] else ""))
        for gpu in torch["gpus"]:
            lines.append(f"  GPU {gpu['index']}: {gpu['name']}, "
                         f"{_size(gpu['memory_bytes'])}, compute {gpu['capability']}")
    lines.append(f"dask {env['dask']['dask']}, distributed {env['dask']['distributed']}")
    cluster = env["cluster"]
    if cluster is not None:
        lines.append(f"cluster {cluster['scheduler']}: {len(cluster['workers'])} workers")
        for worker in cluster["workers"]:
            flag = "  <- exaslide version differs" if worker["mismatch"] else ""
            lines.append(f"  {worker['address']}: exaslide {worker['exaslide']}, python "
                         f"{worker['python']}, {worker['nthreads']} threads{flag}")
    cache = env["cache"]
    lines.append(f"cache {cache['dir']}: "
                 + (f"{_size(cache['bytes'])} in {cache['files']} "
                    f"file{'' if cache['files'] == 1 else 's'}"
                    if cache["exists"] else "not created yet")
                 + f", limit {_size(cache['limit_bytes'])}, "
                   f"{_size(cache['free_bytes'])} free on its disk"
                 + (f" ({cache['error']})" if cache.get("error") else ""))
    machine = env["machine"]
    lines.append(f"machine: {machine['cpus']} CPUs ({machine['cpus_usable']} usable), "
                 f"memory {_size(machine['memory_bytes'])} "
                 f"({_size(machine['memory_available_bytes'])} available)")
    return "\n".join(lines)
