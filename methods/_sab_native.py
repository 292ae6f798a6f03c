"""SAB's read compiled for the CPU (methods/_sab_native.cpp): built by the system's C++ compiler on
first use, cached by the hash of its source, its flags, the compiler and the processor, and called
through ctypes. Where it cannot be built or does not apply (no compiler, a GPU tensor, another
dtype, the short-memory softmax read, variant=released_literal), SABNetwork runs the same read in
PyTorch ops, with one warning naming why. CREDITBENCH_SAB_NATIVE=0 turns it off (to compare).

The two are the same arithmetic up to rounding (tests/test_sab_native.py holds them together in
float64 and each to autograd), not bitwise: a run's numbers are reproducible on one machine with one
of them, and the compiled read's use is recorded in each SAB run's record (`sab_native`)."""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("_sab_native.cpp")
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-shared", "-fPIC", "-std=c++17"]
SCORER_KINDS = {"dot": 0, "mlp": 1, "add": 2}

_lib: ctypes.CDLL | None = None
_why_not: str | None = None   # why the library is unavailable, once known


def _processor() -> str:
    """What -march=native compiles for: the CPU's model and flags (a shared cache on a cluster of
    different machines keeps one library per kind)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({l for l in lines if l.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("CREDITBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "creditbench")
    for folder in (Path(root), Path(tempfile.gettempdir()) / f"creditbench-{os.getuid()}"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    raise OSError(f"no writable cache folder ({root} nor the temporary folder)")


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise OSError("no C++ compiler (g++) on PATH")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    digest = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(FLAGS), version, _processor()]).encode())
    folder = _cache_dir()
    target = folder / f"sab_native-{digest.hexdigest()[:16]}.so"
    if not target.exists():
        from filelock import FileLock
        with FileLock(str(target) + ".lock", timeout=600):
            if not target.exists():   # another process may have built it while this one waited
                partial = target.with_suffix(f".{os.getpid()}.tmp")
                done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(partial)],
                                      capture_output=True, text=True, timeout=600)
                if done.returncode:
                    partial.unlink(missing_ok=True)
                    raise OSError(f"{compiler} failed: {done.stderr.strip().splitlines()[-1:]}")
                os.replace(partial, target)
    lib = ctypes.CDLL(str(target))
    P, I, D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    for suffix in ("f", "d"):
        read = getattr(lib, f"sab_read_{suffix}")
        read.argtypes = [P, I, I, I, I, I, I, P, P, P, I, I, D] + [P] * 10
        read.restype = ctypes.c_int
        back = getattr(lib, f"sab_read_backward_{suffix}")
        back.argtypes = [P, I, I, I, I, I, I, I] + [P] * 11
        back.restype = ctypes.c_int
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled read, built on the first call; None (with one warning saying why) if it cannot be."""
    global _lib, _why_not
    if _lib is None and _why_not is None:
        if os.environ.get("CREDITBENCH_SAB_NATIVE", "1") == "0":
            _why_not = "CREDITBENCH_SAB_NATIVE=0"
        else:
            try:
                _lib = _build()
            except (OSError, subprocess.SubprocessError, AttributeError) as e:
                _why_not = str(e)
                warnings.warn(f"SAB's compiled read is unavailable ({_why_not}); using the PyTorch read "
                              f"(same results up to rounding, slower)", RuntimeWarning, stacklevel=2)
    return _lib


def applies(like: torch.Tensor) -> bool:
    """Whether the compiled read serves tensors like this one (CPU, float32 or float64)."""
    return like.device.type == "cpu" and like.dtype in (torch.float32, torch.float64) and library() is not None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def read(memory, kind: str, q: torch.Tensor, v: torch.Tensor | None, h_hat: torch.Tensor, n: int,
         released: bool, floor: float, with_r: bool):
    """One long read (|M| > k_top) without gradient: (idx, flat, a, w, w_f, mask/Z, m, z, h, r) as
    choose_and_weigh and _AttentionStep.forward compute them (z: the MLP's chosen tanh, else None;
    r: only with_r)."""
    B, H = h_hat.shape
    h_hat, q = h_hat.contiguous(), q.contiguous()
    idx = torch.empty(B, n, dtype=torch.int64)
    flat = torch.empty(B * n, dtype=torch.int64)
    small = h_hat.new_empty(4, B, n)   # a, w, w_f, mask/Z
    m = h_hat.new_empty(B, n, H)
    z = h_hat.new_empty(B, n, H) if kind == "mlp" else None
    out = h_hat.new_empty(B, H)
    r = h_hat.new_empty(B, H) if with_r else None
    fn = _lib.sab_read_f if h_hat.dtype == torch.float32 else _lib.sab_read_d
    if fn(memory.buf.data_ptr(), B, memory.size, H, memory.row, memory.width - H, SCORER_KINDS[kind],
          q.data_ptr(), _ptr(v), h_hat.data_ptr(), n, int(released), floor, idx.data_ptr(), flat.data_ptr(),
          small[0].data_ptr(), small[1].data_ptr(), small[2].data_ptr(), small[3].data_ptr(), m.data_ptr(),
          _ptr(z), out.data_ptr(), _ptr(r)):
        raise ValueError(f"compiled read: {n} rows chosen from a memory of {memory.size}")
    a, w, w_f, moz = small.unbind(0)
    return idx, flat, a, w, w_f, moz, m, z, out, r


def read_backward(g: torch.Tensor, kind: str, threshold_grad: bool, width: int, flat, w, w_f, moz, m, q, z, v,
                  store_grad: torch.Tensor):
    """Adds the chosen rows' gradients into store_grad; returns (g_q, g_v): for "dot" the sum of
    g_a_i m_i [B, H] (the caller multiplies by W), for "mlp" d/d q [B, H] and d/d v [H], for "add"
    d/d q [B]."""
    B, n, H = m.shape
    g = g.contiguous()
    g_q = g.new_empty(B) if kind == "add" else g.new_empty(B, H)
    g_v = g.new_empty(H) if kind == "mlp" else None
    fn = _lib.sab_read_backward_f if g.dtype == torch.float32 else _lib.sab_read_backward_d
    fn(g.data_ptr(), B, n, H, width, width - H, SCORER_KINDS[kind], int(threshold_grad), w.data_ptr(),
       w_f.data_ptr(), moz.data_ptr(), m.data_ptr(), q.data_ptr(), _ptr(z), _ptr(v), flat.data_ptr(),
       store_grad.data_ptr(), g_q.data_ptr(), g_v.data_ptr() if g_v is not None else None)
    return g_q, g_v
