"""Launching a Triton kernel whose specialization repeats call after call, without Triton's per-call work.

``kernel[grid](...)`` binds the arguments, computes their specialization, looks the compiled kernel up
and then calls its launcher: on the H200 machine's host most of a launch's host time is spent before the
launcher. For a call whose scalar arguments and constexprs are fixed (a planned call of known sizes), the
only thing that still varies is the pointers, and Triton specializes a pointer on two properties, its
dtype and whether it is 16-byte aligned. So the first launch per pattern of those goes through Triton
(compiling or finding the kernel, exactly as always), and later launches with that pattern hand the same
compiled kernel's launcher the same arguments, pointers as integers. A launch hook set by a profiler sends every launch through Triton.
"""
from __future__ import annotations

try:  # the launcher convention used below (every argument, constexprs included) is that of knobs' Triton
    from triton import knobs
except ImportError:  # an older Triton: every launch goes through kernel[grid]
    knobs = None


def _no_hooks(hook) -> bool:
    """Whether a launch hook of knobs.runtime is unset: None, or (Triton 3.6 on) an empty HookChain."""
    return hook is None or not getattr(hook, "calls", True)


def _raw_stream():
    import torch

    return getattr(torch._C, "_cuda_getCurrentRawStream", None)


_MOD_16 = (15).__and__


class DirectLaunch:
    """``fn[grid](*pointers, **constants, **options)`` for a fixed grid, constants and options, and one
    dtype per pointer (the caller's promise: a call with other dtypes needs another DirectLaunch).

    pointers: the kernel's leading parameters, given to each call as data pointers and, for the launches
    that go through Triton, as a function returning the tensors (called only then: on the CPU, at the
    first launch of an alignment pattern, under a profiler's launch hook); constants: every other
    parameter by name (scalars and constexprs); options: num_warps, num_stages.
    """

    def __init__(self, fn, grid: tuple, constants: dict, options: dict, device):
        self.fn, self.grid, self.constants, self.options = fn, grid, constants, options
        names = list(fn.arg_names)
        self.pointers = len(names) - len(constants)
        if set(names[self.pointers:]) != set(constants):
            raise ValueError(f"{fn.__name__}: constants {sorted(constants)} are not its trailing parameters {names}")
        self.tail = tuple(constants[name] for name in names[self.pointers:])
        self.grid3 = (tuple(grid) + (1, 1))[:3]
        self.raw_stream = _raw_stream() if device.type == "cuda" and knobs is not None else None
        self.index = device.index
        self.compiled = {}  # alignments of the pointers -> Triton's compiled kernel

    def __call__(self, ptrs: tuple, tensors) -> None:
        runtime = knobs.runtime if self.raw_stream is not None else None
        direct = runtime is not None and _no_hooks(runtime.launch_enter_hook) and _no_hooks(runtime.launch_exit_hook)
        # Whether each pointer is 16-byte aligned: with the dtypes, what Triton specializes a pointer on
        # (the remainder is finer than that, and cheap).
        key = tuple(map(_MOD_16, ptrs))
        compiled = self.compiled.get(key) if direct else None
        if compiled is None:
            compiled = self.fn[self.grid](*tensors(), **self.constants, **self.options)
            if direct and getattr(compiled, "function", None) is not None:
                self.compiled[key] = compiled
            return
        g0, g1, g2 = self.grid3
        compiled.run(g0, g1, g2, self.raw_stream(self.index), compiled.function, compiled.packed_metadata, None,
                     None, None, *ptrs, *self.tail)


_LAUNCHES: dict = {}
_MAX_LAUNCHES = 4096  # distinct (kernel, grid, constants) kept; a serving process sees a few hundred


def direct_launch(fn, grid: tuple, dtypes: tuple, device, options: dict | None = None, **constants) -> DirectLaunch:
    """The DirectLaunch of (kernel, grid, pointer dtypes, device, constants, options), made once."""
    options = options or {}
    key = (fn, grid, dtypes, device, tuple(constants.items()), tuple(options.items()))
    direct = _LAUNCHES.get(key)
    if direct is None:
        if len(_LAUNCHES) >= _MAX_LAUNCHES:
            _LAUNCHES.clear()
        direct = _LAUNCHES[key] = DirectLaunch(fn, grid, constants, options, device)
    return direct

