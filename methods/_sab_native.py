"""SAB's read compiled for the CPU (methods/_sab_native.cpp): built by the system's C++ compiler on
first use (under a second), cached by the hash of its source, its flags, the compiler and the
processor (in $CREDITBENCH_CACHE, default ~/.cache/creditbench), and called through ctypes. Where it
does not apply (a GPU tensor, a dtype other than float32/float64, the short-memory read while
|M| <= k_top, variant=released_literal) SABNetwork reads with PyTorch operations; where it cannot be
built (no compiler) it warns once, naming why, and reads with PyTorch operations throughout.
CREDITBENCH_SAB_NATIVE=0 turns it off (to compare the two).

The two reads are the same arithmetic up to rounding, not bitwise (tests/test_sab_native.py holds
them together in float64, and tests/test_sab.py each to autograd), and exactly tied scores go to
the earlier memory here, in torch.topk's order there: a run is bitwise reproducible on one machine
with one of them. Records do not say which read ran (on a machine with g++, the compiled one unless
CREDITBENCH_SAB_NATIVE=0)."""
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
        keep = ("model name", "flags", "Features", "CPU implementer", "CPU part")   # x86; aarch64
        return platform.machine() + "\n" + "\n".join(sorted({l for l in lines if l.startswith(keep)}))
    except OSError:
        return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("CREDITBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "creditbench")
    for folder in (Path(root), Path(tempfile.gettempdir()) / f"creditbench-{os.getuid()}"):
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = folder.stat()
            # a library loaded from here runs as this user: only from a folder no one else can write
            if os.access(folder, os.W_OK) and st.st_uid == os.getuid() and not st.st_mode & 0o022:
                return folder
        except OSError:
            continue
    raise OSError(f"no cache folder of this user's that only it can write ({root}, nor one in the temporary folder)")


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
        read.argtypes = [P, I, P, I, P, I, I, I, I, I, I, P, P, P, I, I, D] + [P] * 9
        read.restype = ctypes.c_int
        back = getattr(lib, f"sab_read_backward_{suffix}")
        back.argtypes = [P, I, I, I, I, I, I, I] + [P] * 9 + [I] + [P] * 3
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
            except Exception as e:  # noqa: BLE001 - whatever stops the build, the PyTorch read serves
                _why_not = str(e)
                warnings.warn(f"SAB's compiled read is unavailable ({_why_not}); using the PyTorch read "
                              f"(same results up to rounding, slower)", RuntimeWarning, stacklevel=2)
    return _lib


def applies(like: torch.Tensor) -> bool:
    """Whether the compiled read serves tensors like this one (CPU, float32 or float64)."""
    return like.device.type == "cpu" and like.dtype in (torch.float32, torch.float64) and library() is not None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def read(memory, kind: str, q: torch.Tensor, params, h_hat: torch.Tensor, sparsifier, with_r: bool):
    """One long read (|M| > sparsifier.k_top) without gradient, as choose_and_weigh and
    _AttentionStep.forward compute it: (q, flat, weights, m, z, h, r) with q the query as read
    (contiguous: the backward reads it as such), flat [B * n] the chosen rows,
    weights [4, B, n] = (scores a, weights w, w_f, mask / Z) (Sparsifier.forward), m [B, n, H] their
    values, z the MLP's tanh of them (else None), h = h^ + r and r [B, H] (None unless with_r)."""
    B, H = h_hat.shape
    n = sparsifier.n
    h_hat, q, v = h_hat.contiguous(), q.contiguous(), params[0].contiguous() if kind == "mlp" else None
    flat = torch.empty(B * n, dtype=torch.int64)
    weights = h_hat.new_empty(4, B, n)
    m = h_hat.new_empty(B, n, H)
    z = h_hat.new_empty(B, n, H) if kind == "mlp" else None
    h = h_hat.new_empty(B, H)
    r = h_hat.new_empty(B, H) if with_r else None
    fn = _lib.sab_read_f if h_hat.dtype == torch.float32 else _lib.sab_read_d
    (vals, keys, extra), (vrow, krow, erow) = memory.bufs, memory.widths
    step = B * n * h_hat.element_size()
    w = weights.data_ptr()
    if fn(vals.data_ptr(), vrow, keys.data_ptr(), krow, _ptr(extra), erow, B, memory.size, H, memory.key_width,
          SCORER_KINDS[kind], q.data_ptr(), _ptr(v), h_hat.data_ptr(), n,
          int(sparsifier.released), sparsifier.floor, flat.data_ptr(), w, w + step, w + 2 * step,
          w + 3 * step, m.data_ptr(), _ptr(z), h.data_ptr(), _ptr(r)):
        raise ValueError(f"compiled read: {n} rows chosen from a memory of {memory.size}")
    return q, flat, weights, m, z, h, r


def read_backward(g: torch.Tensor, kind: str, threshold_grad: bool, flat, weights, m, q, z, params, store,
                  width: int):
    """Adds the chosen rows' gradients into the memory's gradient store; returns (g_q, g_v): for "dot"
    d/d h^ [B, H] (read from the chosen rows' cached keys), for "mlp" d/d q [B, H] and d/d v [H], for
    "add" d/d q [B]."""
    B, n, H = m.shape
    g, q = g.contiguous(), q.contiguous()
    v = params[0].contiguous() if kind == "mlp" else None
    g_q = g.new_empty(B) if kind == "add" else g.new_empty(B, H)
    g_v = g.new_empty(H) if kind == "mlp" else None
    fn = _lib.sab_read_backward_f if g.dtype == torch.float32 else _lib.sab_read_backward_d
    step = B * n * g.element_size()
    w = weights.data_ptr()
    fn(g.data_ptr(), B, n, H, width, width - H, SCORER_KINDS[kind], int(threshold_grad), w + step, w + 2 * step,
       w + 3 * step, m.data_ptr(), q.data_ptr(), _ptr(z), _ptr(v),
       flat.data_ptr(), store.keys.data_ptr(), store.keys.shape[2], store.buffer(g, width).data_ptr(),
       g_q.data_ptr(), _ptr(g_v))
    return g_q, g_v
