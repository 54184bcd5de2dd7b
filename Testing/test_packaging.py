"""Extension packaging: CMake lists complete, Python 3.9 grammar where Slicer imports, metadata files."""
import ast
import json
import re
import struct
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "KneePipelineLib"
MODULE_DIR = ROOT / "KneePipeline"
# Files Slicer's own Python (3.9 in Slicer 5.8) imports.
PY39_FILES = ["KneePipeline/KneePipeline.py", "KneePipelineLib/__init__.py", "KneePipelineLib/options.py",
              "KneePipelineLib/progress.py", "KneePipelineLib/errors.py", "KneePipelineLib/manifest.py",
              "KneePipelineLib/registry.py", "KneePipelineLib/runner.py", "KneePipelineLib/envsetup.py",
              "KneePipelineLib/envpython.py", "KneePipelineLib/labels.py",
              "KneePipelineLib/io/__init__.py", "KneePipelineLib/io/writers.py"] + sorted(
    str(p.relative_to(ROOT)) for p in list((LIB / "slicer_io").glob("*.py"))
    + list((MODULE_DIR / "KneePipelineModule").glob("*.py")))


def _library_files():
    """Library files relative to KneePipelineLib/ (how KneePipelineLib/CMakeLists.txt lists them)."""
    return sorted(str(p.relative_to(LIB)).replace("\\", "/") for p in LIB.rglob("*.py")
                  if "__pycache__" not in p.parts)


def _cmake_list(text, var):
    m = re.search(r"set\(%s\s+(.*?)\)" % re.escape(var), text, re.S)
    assert m, "no set(%s ...) in CMakeLists.txt" % var
    return [line.strip() for line in m.group(1).splitlines() if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize("rel", PY39_FILES)
def test_slicer_side_files_use_python39_grammar(rel):
    src = (ROOT / rel).read_text(encoding="utf-8")
    tree = ast.parse(src, filename=rel, feature_version=(3, 9))
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
                 any(a.name == "annotations" for a in n.names) for n in tree.body)
    if future:
        return
    # `X | Y` in an annotation parses on 3.9 but fails when evaluated there
    for node in ast.walk(tree):
        ann = getattr(node, "annotation", None) if not isinstance(node, ast.arguments) else None
        anns = [ann, getattr(node, "returns", None)]
        for a in anns:
            if a is not None and any(isinstance(x, ast.BinOp) and isinstance(x.op, ast.BitOr) for x in ast.walk(a)):
                pytest.fail("%s:%d uses `X | Y` in an annotation (fails on Python 3.9)" % (rel, a.lineno))
    assert not any(type(n).__name__ == "Match" for n in ast.walk(tree))


def test_module_folder_has_exactly_one_python_file():
    assert sorted(p.name for p in MODULE_DIR.glob("*.py")) == ["KneePipeline.py"], \
        "every .py directly in KneePipeline/ is loaded by Slicer as a module: move library code to KneePipelineLib/"


def test_every_library_file_is_listed_in_cmake():
    listed = _cmake_list((LIB / "CMakeLists.txt").read_text(encoding="utf-8"), "KneePipelineLib_PYTHON_SCRIPTS")
    on_disk = _library_files()
    missing = sorted(set(on_disk) - set(listed))
    stale = sorted(set(listed) - set(on_disk))
    assert not missing, ("library files not packaged: add %s to KneePipelineLib_PYTHON_SCRIPTS in "
                         "KneePipelineLib/CMakeLists.txt (or run `python tools/update_cmake_lists.py`)" % ", ".join(missing))
    assert not stale, "CMakeLists.txt lists files that do not exist: %s" % ", ".join(stale)


def test_top_level_cmake_is_a_slicer_extension():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"^project\(KneePipeline\)", text, re.M)
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(r"set\(%s " % var, text), var
    order = [text.index(s) for s in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                                     "add_subdirectory(KneePipelineLib)", "add_subdirectory(KneePipeline)\n",
                                     "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                                     "include(${Slicer_EXTENSION_CPACK})")]
    assert order == sorted(order)


def test_library_is_built_with_subdir_from_its_own_folder():
    """slicerMacroBuildScriptedModule(... WITH_SUBDIR) copies SCRIPTS to <qt-scripted-modules>/<name of the
    folder whose CMakeLists.txt calls it>/<script path>. Called from the top level, the package would land in
    <qt-scripted-modules>/<repository folder>/KneePipelineLib/ where the module does not look; called from
    KneePipelineLib/ (like Slicer's DICOMLib) with paths relative to it, it lands in
    <qt-scripted-modules>/KneePipelineLib/, beside KneePipeline.py."""
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert not re.search(r"^slicerMacroBuildScriptedModule", top, re.M), "build the library from KneePipelineLib/"
    text = (LIB / "CMakeLists.txt").read_text(encoding="utf-8")
    call = re.search(r"^slicerMacroBuildScriptedModule\((.*?)\)", text, re.S | re.M).group(1).split()
    assert call[:2] == ["NAME", "KneePipelineLib"] and "WITH_SUBDIR" in call
    assert "SCRIPTS" in call and call[call.index("SCRIPTS") + 1] == "${KneePipelineLib_PYTHON_SCRIPTS}"
    listed = _cmake_list(text, "KneePipelineLib_PYTHON_SCRIPTS")
    assert "__init__.py" in listed and not any(f.startswith("KneePipelineLib/") for f in listed)
    # the module file looks for the package beside itself (installed) or one folder up (source tree)
    module = (MODULE_DIR / "KneePipeline.py").read_text(encoding="utf-8")
    assert "for _folder in (_HERE, os.path.dirname(_HERE))" in module


def test_module_cmake_lists_script_resources_and_tests():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "set(MODULE_NAME KneePipeline)" in text
    resources = [r.replace("${MODULE_NAME}", "KneePipeline") for r in _cmake_list(text, "MODULE_PYTHON_RESOURCES")]
    assert sorted(resources) == ["Resources/Icons/KneePipeline.png", "Resources/UI/KneePipeline.ui"]
    for r in resources:
        assert (MODULE_DIR / r).is_file(), r
    scripts = [r.replace("${MODULE_NAME}", "KneePipeline") for r in _cmake_list(text, "MODULE_PYTHON_SCRIPTS")]
    on_disk = ["KneePipeline.py"] + sorted("KneePipelineModule/" + p.name
                                           for p in (MODULE_DIR / "KneePipelineModule").glob("*.py"))
    assert sorted(scripts) == sorted(on_disk), "list every file of KneePipelineModule/ in KneePipeline/CMakeLists.txt"
    assert "WITH_GENERIC_TESTS" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def _png_size(path):
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "%s is not a PNG" % path
    return struct.unpack(">II", data[16:24])


def test_icons_are_128px_pngs():
    assert _png_size(MODULE_DIR / "Resources" / "Icons" / "KneePipeline.png") == (128, 128)
    assert _png_size(ROOT / "Resources" / "KneePipeline.png") == (128, 128)


def test_catalog_entry_follows_schema_v102():
    entry = json.loads((ROOT / "KneePipeline.json").read_text(encoding="utf-8"))
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert {"$schema", "category", "scm_url"} <= set(entry)
    # the properties of Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json (additionalProperties: false)
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "dicom_support_rule", "build_subdirectory", "enabled", "tier"}
    assert set(entry) <= allowed, set(entry) - allowed
    assert entry["scm_url"].endswith(".git")
    assert all(isinstance(entry[k], str) for k in ("category", "scm_url", "scm_revision") if k in entry)
    if "tier" in entry:
        assert isinstance(entry["tier"], int) and 1 <= entry["tier"] <= 5
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert 'set(EXTENSION_CATEGORY "%s")' % entry["category"] in cmake


def test_s4ext_has_the_legacy_fields():
    fields = {}
    for line in (ROOT / "KneePipeline.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    for key in ("scm", "scmurl", "depends", "build_subdirectory", "homepage", "category", "iconurl", "description"):
        assert fields.get(key), key


def test_s4ext_is_generated_from_the_catalog_entry_and_cmake():
    """One source of truth: KneePipeline.json (scm, category) and the EXTENSION_* variables of CMakeLists.txt;
    tools/make_s4ext.py writes KneePipeline.s4ext from them."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_s4ext", str(ROOT / "tools" / "make_s4ext.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (ROOT / "KneePipeline.s4ext").read_text(encoding="utf-8") == gen.render(ROOT), \
        "run `python tools/make_s4ext.py` and commit KneePipeline.s4ext"
    entry = json.loads((ROOT / "KneePipeline.json").read_text(encoding="utf-8"))
    text = (ROOT / "KneePipeline.s4ext").read_text(encoding="utf-8")
    assert "scmurl %s\n" % entry["scm_url"] in text and "category %s\n" % entry["category"] in text


def test_screenshot_named_in_cmake_exists():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    urls = re.search(r'set\(EXTENSION_SCREENSHOTURLS "([^"]+)"\)', text).group(1).split()
    assert urls
    for url in urls:
        rel = url.split("/main/", 1)[1]
        w, h = _png_size(ROOT / rel)
        assert w >= 400 and h >= 300, (rel, w, h)


def test_module_puts_the_library_on_sys_path_when_run_from_source():
    tree = ast.parse((MODULE_DIR / "KneePipeline.py").read_text(encoding="utf-8"), feature_version=(3, 9))
    src = ast.unparse(tree)
    first_own_import = min(n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                           and (n.module or "").split(".")[0] in ("KneePipelineLib", "KneePipelineModule"))
    insert = max(n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "sys.path.insert")
    assert insert < first_own_import
    assert "os.path.dirname(_HERE)" in src and "'KneePipelineLib'" in src
