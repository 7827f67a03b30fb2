"""python -m es_dual.info: what es_dual sees here (versions, devices, backends, the CUTLASS build cache)."""
from __future__ import annotations

import platform
import shutil
import subprocess

import torch


def _nvidia_smi(fields: str, index: int = 0) -> list[str] | None:
    """Values of nvidia-smi --query-gpu fields for GPU `index`, or None without nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits", f"--id={index}"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return [v.strip() for v in out.split(",")] if out else None


def driver_version() -> str:
    values = _nvidia_smi("driver_version")
    return values[0] if values else "unknown (nvidia-smi not found)"


def gpu_clocks(index: int = 0) -> str:
    values = _nvidia_smi("clocks.sm,clocks.max.sm,clocks.mem", index)
    if not values or len(values) != 3:
        return "clocks unknown"
    return f"SM clock {values[0]}/{values[1]} MHz (now/max), memory {values[2]} MHz"


def report() -> str:
    import es_dual
    from .cutlass import build
    from .dispatch import BACKENDS

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    lines = [
        f"es_dual {es_dual.__version__} (Python {platform.python_version()}, {platform.machine()})",
        f"torch {torch.__version__}, triton {triton_version}, CUDA (torch) {torch.version.cuda}",
    ]
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        lines.append(f"driver {driver_version()}")
        for index in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(index)
            lines.append(f"cuda:{index}: {p.name}, compute capability {p.major}.{p.minor}, "
                         f"{p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB")
            devices.append(torch.device("cuda", index))
    else:
        lines.append("no CUDA device visible")
    lines.append("backends:")
    for device in devices:
        for name, backend in BACKENDS.items():
            reasons = backend.device_reasons(device)
            state = "available" if not reasons else "not available: " + "; ".join(reasons)
            lines.append(f"  {device}  {name:<15} {state}")
    lines.append(f"CUTLASS build cache: {build.cache_root()}")
    built = build.exact_library() or build.any_library()
    lines.append(f"  library for these sources ({build.source_key()}): {built or 'not built'}")
    cannot = build.can_build()
    lines.append("  can build here: " + ("yes" if not cannot else "no (" + "; ".join(cannot) + ")"))
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
