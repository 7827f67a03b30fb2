"""Build ``libes_dual.so`` from ``csrc/`` and the generated kernel units, cached by content.

``python -m es_dual.cutlass.build`` builds (if needed) and prints the library's path.

Cache layout (root: ``$ES_DUAL_CACHE_DIR``, default ``~/.cache/es_dual``)::

    lib-<source key>/<compiler key>/libes_dual.so   (+ build.json, the generated sources)
    objects/<compiler key>/<unit>-<object key>.o     (one per compiled unit: see object_key)

* source key  = hash of the csrc/ files, the generated text and the flags. It is computed from files
  of this package alone: no CUTLASS header and no compiler is needed to compute it. A tuning build
  (``ES_DUAL_TUNING=1``, see generate.py) generates more text, hence has its own key; the variable must
  be set both when building and when loading such a library.
* compiler key = hash of ``nvcc --version``.

A machine that can build (nvcc + CUTLASS headers) uses, or builds, the library of its own compiler.
A machine that cannot build (no CUTLASS headers, e.g. a GPU box that only runs) uses a library built
elsewhere for the same sources: copy the cache folder there and point ``ES_DUAL_CACHE_DIR`` at it.
The library links the CUDA runtime statically and neither libcuda nor libtorch nor libpython, so a
build for sm_90a runs on any Linux x86-64 machine with a Hopper GPU and a recent enough driver.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import generate

LIB_NAME = "libes_dual.so"
CSRC = Path(__file__).resolve().parents[2] / "csrc"
HAND_WRITTEN_UNITS = ("api.cu",)  # compiled as they are; the kernel units come from generate.py

# Flags that decide the binary (hashed). Include paths are added at build time and not hashed: they
# differ between machines while naming the same pinned CUTLASS release (nvidia-cutlass in pyproject).
COMPILE_FLAGS = (
    "-gencode", "arch=compute_90a,code=sm_90a",
    "-O3", "-std=c++17", "--expt-relaxed-constexpr",
    "-Xcompiler", "-fPIC",
    "-Xcompiler", "-fvisibility=hidden",  # export only the ES_DUAL_API functions
    "-DNDEBUG",
)
LINK_FLAGS = ("-shared", "-cudart", "static", "-gencode", "arch=compute_90a,code=sm_90a")


class BuildError(RuntimeError):
    pass


def cache_root() -> Path:
    return Path(os.environ.get("ES_DUAL_CACHE_DIR") or Path.home() / ".cache" / "es_dual")


def _sha(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


def source_files() -> dict[str, str]:
    """Hand-written sources (csrc/) by file name."""
    return {
        p.name: p.read_text()
        for p in sorted(CSRC.iterdir())
        if p.suffix in (".h", ".cuh", ".cu") and p.is_file()
    }


def source_key(tuning: bool | None = None) -> str:
    """Cache key of the sources; ``tuning`` None: as ES_DUAL_TUNING says."""
    return _source_key(generate.tuning_requested() if tuning is None else tuning)


@functools.lru_cache(maxsize=None)
def _source_key(tuning: bool) -> str:
    parts = ["es_dual-build-1", *COMPILE_FLAGS, "|", *LINK_FLAGS]
    for name, text in {**source_files(), **generate.generate(tuning)}.items():
        parts += [name, text]
    return _sha(*parts)[:16]


@functools.lru_cache(maxsize=None)
def find_nvcc() -> str | None:
    candidates = [shutil.which("nvcc")]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "nvcc"))
    candidates.append("/usr/local/cuda/bin/nvcc")
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def find_cuobjdump() -> str | None:
    """cuobjdump for reading the library's SASS: the one in Triton's wheel (its CUDA matches the wheel's
    ptxas), else the one next to nvcc or on PATH."""
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    nvcc = find_nvcc()
    beside = os.path.join(os.path.dirname(nvcc), "cuobjdump") if nvcc else None
    return beside if beside and os.path.isfile(beside) else shutil.which("cuobjdump")


@functools.lru_cache(maxsize=None)
def nvcc_version() -> str | None:
    nvcc = find_nvcc()
    if nvcc is None:
        return None
    try:
        return subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def compiler_key(version: str) -> str:
    return _sha(version)[:12]


def cutlass_include_dirs() -> list[str] | None:
    """CUTLASS's include/ and tools/util/include/ ($ES_DUAL_CUTLASS_DIR, else the nvidia-cutlass wheel)."""
    root = os.environ.get("ES_DUAL_CUTLASS_DIR")
    if not root:
        try:
            import cutlass_library
        except ImportError:
            return None
        root = os.path.join(os.path.dirname(cutlass_library.__file__), "source")
    dirs = [os.path.join(root, "include"), os.path.join(root, "tools", "util", "include")]
    if not os.path.isfile(os.path.join(dirs[0], "cutlass", "cutlass.h")):
        return None
    return dirs


def can_build() -> list[str]:
    """Reasons this machine cannot build (empty: it can)."""
    reasons = []
    if nvcc_version() is None:
        reasons.append("nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
    if cutlass_include_dirs() is None:
        reasons.append("CUTLASS headers not found (pip install nvidia-cutlass==4.2.0.0, or set ES_DUAL_CUTLASS_DIR)")
    return reasons


def source_dir() -> Path:
    return cache_root() / f"lib-{source_key()}"


def exact_library() -> Path | None:
    """The library of these sources built by this machine's nvcc, if it exists."""
    version = nvcc_version()
    if version is None:
        return None
    path = source_dir() / compiler_key(version) / LIB_NAME
    return path if path.is_file() else None


def any_library() -> Path | None:
    """The newest library of these sources, whatever compiler built it."""
    found = sorted(source_dir().glob(f"*/{LIB_NAME}"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


@contextlib.contextmanager
def _locked(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per source key; the others wait, then reuse
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-40:])
        raise BuildError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")


def _local_includes(text: str, dirs: list[Path], seen: dict[str, str]) -> None:
    """The texts of the quoted #includes found in `dirs`, recursively, into `seen` (name -> text)."""
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("#include \""):
            continue
        name = line.split('"')[1]
        if name in seen:
            continue
        found = next((d / name for d in dirs if (d / name).is_file()), None)
        if found is not None:  # CUTLASS headers are pinned by the package version, not hashed
            seen[name] = found.read_text()
            _local_includes(seen[name], dirs, seen)


def object_key(unit: Path, dirs: list[Path], version: str) -> str:
    """Cache key of one compiled unit: flags, compiler, its text and the es_dual headers it includes, so
    a change to one kernel's header recompiles the units that include it and no others."""
    deps: dict[str, str] = {}
    text = unit.read_text()
    _local_includes(text, dirs, deps)
    parts = ["es_dual-object-1", *COMPILE_FLAGS, version, unit.name, text]
    for name in sorted(deps):
        parts += [name, deps[name]]
    return _sha(*parts)[:24]


def _compile(nvcc: str, includes: list[str], unit: Path, obj: Path, cached: Path) -> None:
    """Compile `unit` into `obj`, through the object cache."""
    if not cached.is_file():
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        _run([nvcc, *COMPILE_FLAGS, *includes, "-c", str(unit), "-o", str(tmp)])
        os.replace(tmp, cached)
    shutil.copyfile(cached, obj)


def build_library(force: bool = False, jobs: int | None = None, log=None) -> Path:
    """Build the library for this machine's nvcc unless it is cached; return its path."""
    reasons = can_build()
    if reasons:
        raise BuildError("cannot build the es_dual CUTLASS library: " + "; ".join(reasons))
    nvcc, version = find_nvcc(), nvcc_version()
    tuning = generate.tuning_requested()
    final = source_dir() / compiler_key(version)
    with _locked(source_dir()):
        if (final / LIB_NAME).is_file() and not force:
            return final / LIB_NAME
        jobs = jobs or int(os.environ.get("ES_DUAL_BUILD_JOBS", 0)) or os.cpu_count() or 1
        work = source_dir() / f"tmp-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        (work / "gen").mkdir(parents=True)
        generated = generate.generate(tuning)
        for name, text in generated.items():
            (work / "gen" / name).write_text(text)
        units = [CSRC / u for u in HAND_WRITTEN_UNITS] + [work / "gen" / n for n in generated if n.endswith(".cu")]
        includes = [f"-I{CSRC}", f"-I{work / 'gen'}"] + [f"-I{d}" for d in cutlass_include_dirs()]
        start = time.monotonic()
        if log:
            log(f"es_dual: building the CUTLASS library ({len(units)} units, {jobs} jobs"
                f"{', tuning tables' if tuning else ''}) in {final}")
        objects = [work / (u.stem + ".o") for u in units]
        object_cache = cache_root() / "objects" / compiler_key(version)
        object_cache.mkdir(parents=True, exist_ok=True)
        dirs = [CSRC, work / "gen"]
        cached = [object_cache / f"{u.stem}-{object_key(u, dirs, version)}.o" for u in units]
        if force:
            for c in cached:
                c.unlink(missing_ok=True)
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(_compile, nvcc, includes, u, o, c) for u, o, c in zip(units, objects, cached)]
            for f in futures:
                f.result()
        _run([nvcc, *LINK_FLAGS, *map(str, objects), "-o", str(work / LIB_NAME)])
        for o in objects:
            o.unlink()
        seconds = time.monotonic() - start
        (work / "build.json").write_text(json.dumps({
            "source_key": source_key(tuning),
            "tuning": tuning,
            "nvcc_version": version,
            "compile_flags": COMPILE_FLAGS,
            "link_flags": LINK_FLAGS,
            "units": [u.name for u in units],
            "jobs": jobs,
            "seconds": round(seconds, 1),
        }, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(work, final)
        if log:
            log(f"es_dual: built {final / LIB_NAME} in {seconds:.0f} s")
        return final / LIB_NAME


def library_path(build: bool = True) -> Path:
    """Path of the library for the current sources, building it at first use when this machine can.

    Order: this compiler's build; else (when this machine cannot build, or ``build=False``) a build of
    the same sources by another compiler; else build now (and say so on stderr).
    """
    exact = exact_library()
    if exact is not None:
        return exact
    reasons = can_build()
    if build and not reasons:
        return build_library(log=lambda msg: print(msg, file=sys.stderr, flush=True))
    other = any_library()
    if other is not None:
        return other
    why = "; ".join(reasons) if reasons else "build=False"
    raise FileNotFoundError(
        f"es_dual: no CUTLASS library for sources {source_key()} under {cache_root()} and it cannot "
        f"be built here ({why}). Build it with `python -m es_dual.cutlass.build` on a machine with nvcc "
        f"and nvidia-cutlass, then copy the cache folder here and set ES_DUAL_CACHE_DIR."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m es_dual.cutlass.build", description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if the library is cached")
    parser.add_argument("--jobs", type=int, default=None, help="parallel nvcc processes (default: CPU count)")
    args = parser.parse_args(argv)
    try:
        path = build_library(force=args.force, jobs=args.jobs, log=lambda m: print(m, file=sys.stderr, flush=True))
    except BuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
