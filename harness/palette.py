"""One colour and marker per method name, the same in every report.

Colours are from the colour-blind-safe sets of Okabe and Ito (2008) and Paul Tol (muted), chosen
so that the methods usually compared side by side differ most: the exact reference bptt in black,
the truncated and sparse methods (tbptt, sab) in vermillion and blue, the forward-mode family
(rtrl, uoro, kf_rtrl, snap1, rflo, eprop) in green, orange, purple, olive, wine and indigo. A
method not listed here gets a colour and marker from a stable hash of its name (md5, not Python's
salted `hash`), moved to the next free colour when two names of one figure collide. Variants of
one method (different hyperparameters) share its colour and differ in line style and marker, so
every figure also reads in grayscale.
"""
from __future__ import annotations

import hashlib

# Okabe-Ito (black, orange, sky blue, bluish green, blue, vermillion, reddish purple) and Tol muted
KNOWN = {
    "bptt": ("#000000", "o"),
    "tbptt": ("#D55E00", "s"),
    "sab": ("#0072B2", "^"),
    "sab_bptt": ("#56B4E9", "v"),
    "rtrl": ("#009E73", "D"),
    "uoro": ("#E69F00", "P"),
    "kf_rtrl": ("#CC79A7", "X"),
    "snap1": ("#999933", "*"),
    "rflo": ("#882255", "<"),
    "eprop": ("#332288", ">"),
    "ckpt_bptt": ("#777777", "h"),
    "dni": ("#8C613C", "p"),
}
# for other names: Tol muted colours not used above, then a few darker ones
SPARE = ["#CC6677", "#44AA99", "#AA4499", "#117733", "#DDCC77", "#88CCEE", "#661100", "#6699CC"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]
VARIANT_MARKERS = ["d", "H", "8"]   # used by no method's own marker: a variant never looks like another method
LINESTYLES = ["-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (3, 1))]


def method_name(label: str) -> str:
    """`tbptt[k=5]` -> `tbptt`."""
    return str(label).split("[", 1)[0]


def _digest(name: str) -> int:
    return int(hashlib.md5(name.encode()).hexdigest(), 16)


def colour_and_marker(name: str, taken: set[str] = frozenset()) -> tuple[str, str]:
    """The fixed colour and marker of a method name; unknown names hash into SPARE, skipping
    colours in `taken` while any is free."""
    if name in KNOWN:
        return KNOWN[name]
    h = _digest(name)
    free = [c for c in SPARE if c not in taken] or SPARE
    return free[h % len(free)], MARKERS[h % len(MARKERS)]


def styles(labels) -> dict[str, dict]:
    """label -> matplotlib keyword arguments (color, marker, linestyle). The colour follows the
    method's name; a method's variants, in sorted order (the default, with no brackets, first),
    take successive line styles and markers."""
    labels = list(dict.fromkeys(str(lab) for lab in labels))
    names = sorted({method_name(lab) for lab in labels}, key=lambda n: (n not in KNOWN, n))
    base, taken = {}, {c for n in names if n in KNOWN for c in [KNOWN[n][0]]}
    for n in names:
        base[n] = colour_and_marker(n, taken)
        taken.add(base[n][0])
    out = {}
    for n in names:
        colour, marker = base[n]
        variants = sorted(lab for lab in labels if method_name(lab) == n)
        for i, lab in enumerate(variants):
            out[lab] = {"color": colour, "linestyle": LINESTYLES[i % len(LINESTYLES)],
                        "marker": marker if i == 0 else VARIANT_MARKERS[(i - 1) % len(VARIANT_MARKERS)]}
    return out


def rank(label: str) -> tuple:
    """Sort key of a method label: the known methods in the order above, then others by name."""
    name = method_name(label)
    order = list(KNOWN)
    return (order.index(name) if name in KNOWN else len(order), name, label)

