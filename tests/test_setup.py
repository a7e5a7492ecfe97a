"""setup.py's choice of build directory (no build is run here)."""
import ast
import os
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_function(name):
    """One function of setup.py, without running setup.py (which would build)."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        tree = ast.parse(f.read())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    scope = {"os": os}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), "setup.py", "exec"), scope)
    return scope[name]


def test_editable_install_builds_in_the_persistent_directory():
    # pip install -e gave build_ext a fresh "/tmp/tmpXXXX.build-temp" each run: ninja saw no
    # objects and recompiled the whole extension (scripts/test.sh after scripts/demo.sh).
    choose = _setup_function("persistent_build_temp")
    default = os.path.join("/src", "build", f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}")
    assert choose("/tmp/tmpab12cd.build-temp", "/src") == default
    assert choose("/tmp/tmpab12cd.build-temp/", "/src") == default
    # what `python setup.py build_ext` picks by default, and any -t DIR, stay as given
    assert choose("build/" + os.path.basename(default), "/src") == "build/" + os.path.basename(default)
    assert choose("/somewhere/else", "/src") == "/somewhere/else"


def test_the_build_command_uses_it():
    with open(os.path.join(ROOT, "setup.py")) as f:
        src = f.read()
    assert 'cmdclass={"build_ext": _BuildExt}' in src
    assert "self.build_temp = persistent_build_temp(self.build_temp, ROOT)" in src
