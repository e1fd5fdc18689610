"""Third-party methods and kernels through the ``lowbit.methods`` entry-point group.

tests/fixtures/plugin is a complete plugin package (pyproject.toml + one module): the ``clip_int4`` method and the
``dense_cache`` kernel. It is installed with pip into a temporary folder (offline, no build isolation) and used
from subprocesses that have that folder on PYTHONPATH, so this process's registry never sees it. Adding a method
this way touches two files (its module and its pyproject entry point), and a kernel lives in the same module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import helpers

PLUGIN = Path(__file__).resolve().parent / "fixtures" / "plugin"


def _env(*paths: Path) -> dict[str, str]:
    env = helpers.cli_env()
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), env["PYTHONPATH"]])
    return env


def _python(code: str, *paths: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "default", "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=_env(*paths), cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The plugin installed with pip into a folder of its own (built from a copy: the build leaves files behind)."""
    tmp = tmp_path_factory.mktemp("plugin")
    source, target = tmp / "src", tmp / "site"
    shutil.copytree(PLUGIN, source)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (target / "lowbit_clip_int4.py").is_file()
    return target


def test_cli_lists_the_plugin_method(site, tmp_path):
    done = subprocess.run([sys.executable, "-W", "default", "-m", "lowbit", "methods"], capture_output=True,
                          text=True, env=_env(site), cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if " clip_int4 " in line)
    assert "int4 weights, symmetric, each row clipped" in row and "clip=0.9" in row
    assert "warning" not in done.stderr.lower(), done.stderr


def test_plugin_method_runs_on_the_plugin_kernel(site, tmp_path):
    """quantize_ with the plugin's method: every Linear runs on its kernel, matches the reference kernel, and the
    model saves and loads back (the saved config names the plugin's method)."""
    folder = helpers.make_llama(tmp_path / "llama")
    done = _python(f"""
        import json, torch, lowbit
        from lowbit import registry

        ids = torch.tensor([[1, 5, 9, 33, 64, 2, 77, 100]])
        cfg = lowbit.config("clip_int4", clip=0.95, compute_dtype="float32")
        model = lowbit.quantize_(lowbit.from_pretrained({str(folder)!r}), cfg)
        ref = lowbit.quantize_(lowbit.from_pretrained({str(folder)!r}), cfg.replace(kernel="reference"))
        with torch.inference_mode():
            got, want = model(input_ids=ids).logits, ref(input_ids=ids).logits
        lowbit.save_pretrained(model, {str(tmp_path / "out")!r})
        again = lowbit.from_pretrained({str(tmp_path / "out")!r})
        saved, loaded = model.state_dict(), again.state_dict()
        layers = lowbit.inspect(model).layers
        print(json.dumps({{
            "plugins": registry.load_plugins(), "again": registry.load_plugins(),
            "kernels": sorted({{x.kernel for x in layers if x.kind == "linear"}}),
            "formats": sorted({{x.format for x in layers if x.kind == "linear"}}),
            "linears": sum(x.kind == "linear" for x in layers),
            "max_diff": float((got - want).abs().max()),
            "reload_equal": saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved),
            "reload_kernels": sorted({{x.kernel for x in lowbit.inspect(again).layers if x.kind == "linear"}}),
            "method": json.load(open({str(tmp_path / "out" / "config.json")!r}))["quantization_config"]["method"],
        }}))
    """, site, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["plugins"] == out["again"] == ["clip_int4"]  # loaded once, when lowbit.methods was imported
    assert out["kernels"] == ["dense_cache"] and out["formats"] == ["int4 g32 sym"] and out["linears"] == 14
    assert out["max_diff"] < 1e-4 and out["method"] == "clip_int4"
    assert out["reload_equal"] and out["reload_kernels"] == ["dense_cache"]


def _dist(site: Path, name: str, module: str, source: str) -> None:
    """A minimal installed distribution: its module and a dist-info with a ``lowbit.methods`` entry point."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[lowbit.methods]\n{module} = {module}\n")


def test_a_broken_plugin_is_a_warning(tmp_path):
    """A plugin that fails to import, or re-registers a built-in name (RegistryError), is left out with a warning
    naming the plugin and the error; lowbit and the built-in methods keep working."""
    site = tmp_path / "site"
    site.mkdir()
    _dist(site, "lowbit-broken", "lowbit_broken", "import a_package_that_is_not_installed\n")
    _dist(site, "lowbit-clash", "lowbit_clash", """
        from lowbit.methods.rtn import RtnConfig, RtnQuantizer
        from lowbit.registry import register_method

        register_method(RtnConfig, RtnQuantizer)
    """)
    done = _python("""
        import lowbit
        from lowbit import registry
        print(registry.load_plugins(), "rtn" in lowbit.methods(), type(lowbit.config("int4")).__name__)
    """, site, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "True", "RtnConfig"]
    warned = [line for line in done.stderr.splitlines() if "lowbit plugin" in line]
    assert len(warned) == 2, done.stderr
    broken = next(line for line in warned if "'lowbit_broken'" in line)
    assert "ModuleNotFoundError" in broken and "a_package_that_is_not_installed" in broken and "lowbit-broken" in broken
    clash = next(line for line in warned if "'lowbit_clash'" in line)
    assert "RegistryError" in clash and "'rtn' is already registered" in clash and "lowbit-clash" in clash
