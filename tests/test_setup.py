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


def test_source_distribution_holds_every_tracked_source(tmp_path):
    # Without MANIFEST.in the sdist held only the .cpp files named in ext_modules: no header, no
    # .cu, no CMakeLists.txt, so `pip install torchquant-*.tar.gz` failed at its first compile.
    import shutil
    import subprocess
    import tarfile

    import pytest

    try:
        tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True,
                                 timeout=60).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    src = tmp_path / "src"
    for f in tracked:  # a copy: setup.py writes python/torchquant/_build_config.py where it runs
        if os.path.isfile(os.path.join(ROOT, f)):
            os.makedirs(src / os.path.dirname(f), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, f), src / f)
    env = {**os.environ, "TORCHQUANT_CUDA": "0"}
    r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=src, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (tarball,) = (tmp_path / "dist").iterdir()
    with tarfile.open(tarball) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    needed = [f for f in tracked if f.startswith(("csrc/", "python/", "tests/")) or f in (
        "CMakeLists.txt", "README.md", "LICENSE", "pyproject.toml", "setup.py")]
    missing = sorted(set(needed) - names)
    assert not missing, missing[:20]
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc")) or n.endswith("_build_config.py")]


def test_torchquant_imports_beside_a_torchvision_that_fails_to_import(tmp_path):
    # torchvision is optional; one built for another torch raises RuntimeError at import
    # ("operator torchvision::nms does not exist"), which made `import torchquant` fail too.
    import subprocess
    from pathlib import Path

    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    package = Path(__file__).resolve().parents[1] / "python"
    code = ("import warnings, torch, torchquant as tq\n"
            "from torch import nn\n"
            "m = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 4, 3), tq.DeQuantStub()).eval()\n"
            "m.qconfig = tq.get_default_qconfig('x86')\n"
            "p = tq.prepare(m); p(torch.randn(2, 3, 8, 8))\n"
            "print(tuple(tq.convert(p)(torch.randn(2, 3, 8, 8)).shape))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(package)])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "(2, 4, 6, 6)"
    assert "torchvision is installed but failed to import (RuntimeError: operator torchvision::nms" in r.stderr
