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


def _compiling() -> bool:
    import torch

    return torch.compiler.is_compiling()


def _raw_stream():
    import torch

    return getattr(torch._C, "_cuda_getCurrentRawStream", None)


_MOD_16 = (15).__and__


class DirectLaunch:
    """``fn[grid](*pointers, **constants, **options)`` for a fixed grid, constants and options.

    pointers: the kernel's leading parameters (tensors), given to each call with their data pointers;
    constants: every other parameter by name (scalars and constexprs); options: num_warps, num_stages.
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
        self.compiled = {}  # dtypes and alignments of the pointers -> Triton's compiled kernel

    def __call__(self, tensors: tuple, ptrs: tuple) -> None:
        runtime = knobs.runtime if self.raw_stream is not None else None
        direct = runtime is not None and _no_hooks(runtime.launch_enter_hook) and _no_hooks(runtime.launch_exit_hook)
        # What Triton specializes a pointer on: its dtype and whether it is 16-byte aligned (the remainder
        # is finer than that, and cheap).
        key = (*map(_MOD_16, ptrs), *[t.dtype for t in tensors])
        compiled = self.compiled.get(key) if direct else None
        if compiled is None:
            compiled = self.fn[self.grid](*tensors, **self.constants, **self.options)
            if direct and getattr(compiled, "function", None) is not None:
                self.compiled[key] = compiled
            return
        g0, g1, g2 = self.grid3
        compiled.run(g0, g1, g2, self.raw_stream(self.index), compiled.function, compiled.packed_metadata, None,
                     None, None, *ptrs, *self.tail)


_LAUNCHES: dict = {}
_MAX_LAUNCHES = 4096  # distinct (kernel, grid, constants) kept; a serving process sees a few hundred


def launch(fn, grid: tuple, tensors: tuple, device, options: dict | None = None, **constants) -> None:
    """``fn[grid](*tensors, **constants, **options)`` through a DirectLaunch kept per (kernel, grid,
    device, constants, options): the form for call sites whose constants change with the call's sizes."""
    options = options or {}
    if _compiling():  # torch.compile traces kernel[grid] calls, not launchers given integers
        fn[grid](*tensors, **constants, **options)
        return
    key = (fn, grid, device, tuple(constants.items()), tuple(options.items()))
    direct = _LAUNCHES.get(key)
    if direct is None:
        if len(_LAUNCHES) >= _MAX_LAUNCHES:
            _LAUNCHES.clear()
        direct = _LAUNCHES[key] = DirectLaunch(fn, grid, constants, options, device)
    direct(tensors, tuple(t.data_ptr() for t in tensors))
