"""Rewrite the glob-free file list in KneePipelineLib/CMakeLists.txt from the .py files on disk.

Slicer packages only the files listed there; Testing/test_packaging.py fails when the list is stale.
Run: python tools/update_cmake_lists.py
"""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(ROOT, "KneePipelineLib")
BEGIN, END = "set(KneePipelineLib_PYTHON_SCRIPTS\n", "  )\n"


def library_files():
    out = []
    for dirpath, dirnames, filenames in os.walk(LIB):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for f in sorted(filenames):
            if f.endswith(".py"):
                out.append(os.path.relpath(os.path.join(dirpath, f), LIB).replace(os.sep, "/"))
    return sorted(out)


def main():
    path = os.path.join(LIB, "CMakeLists.txt")   # paths relative to KneePipelineLib/ (WITH_SUBDIR)
    text = open(path, encoding="utf-8").read()
    start = text.index(BEGIN) + len(BEGIN)
    stop = text.index(END, start)
    body = "".join("  %s\n" % f for f in library_files())
    open(path, "w", encoding="utf-8").write(text[:start] + body + text[stop:])
    print("listed %d files in %s" % (len(library_files()), os.path.relpath(path, ROOT)))


if __name__ == "__main__":
    main()
