"""Rebuild python_docstrings.txt: the docstrings of a fixed list of pure-Python modules of the
CPython 3.11 standard library (PSF License, see PSF-LICENSE.txt), read with `ast` (nothing is
imported or run), dedented, in file order, ASCII only, one blank line between docstrings.

    python tasks/data/make_corpus.py [path/to/Lib]    # default: this interpreter's standard library
"""
import ast
import inspect
import sys
import sysconfig
from pathlib import Path

MODULES = """abc argparse ast base64 bisect calendar cmd codecs collections/__init__ configparser contextlib
copy csv dataclasses datetime decimal difflib email/message enum fractions ftplib functools
getopt gettext glob gzip heapq hmac html/parser http/client http/cookies imaplib inspect ipaddress
json/__init__ json/decoder json/encoder locale logging/__init__ mailbox numbers operator optparse
pathlib pickle pprint queue random re/__init__ reprlib sched secrets shlex shutil smtplib socket
statistics string subprocess tarfile tempfile textwrap threading timeit tokenize traceback typing
unittest/case urllib/parse urllib/request uuid warnings weakref zipfile""".split()


def docstrings(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc and doc.isascii() and len(doc) > 40:
                yield inspect.cleandoc(doc)


def main(lib: Path, out: Path) -> None:
    docs = [d for m in MODULES for d in docstrings(lib / f"{m}.py")]
    text = "\n\n".join(docs) + "\n"
    out.write_text(text, encoding="ascii")
    print(f"{out}: {len(text)} characters, {len(set(text))} distinct, from {len(docs)} docstrings")


if __name__ == "__main__":
    lib = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(sysconfig.get_paths()["stdlib"])
    main(lib, Path(__file__).with_name("python_docstrings.txt"))
