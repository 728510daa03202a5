"""Build hook: bundle the viewer's OpenSeadragon from npm into the package's static files.

OpenSeadragon is pinned in package-lock.json and is not committed. Before the Python files
are built (wheel, sdist, `pip install -e .`), `npm ci` installs it into node_modules/
when the vendored copy is missing or has another version, and the files the viewer needs
(openseadragon.min.js, its button images and its licence) are copied into
src/exaslide/viewer/static/vendor/openseadragon/. An sdist carries that copy, so building
a wheel from it needs no npm. Everything else is in pyproject.toml.
"""

import json
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "node_modules" / "openseadragon"
VENDOR = ROOT / "src" / "exaslide" / "viewer" / "static" / "vendor" / "openseadragon"


def _locked_version() -> str:
    lock = json.loads((ROOT / "package-lock.json").read_text())
    return lock["packages"]["node_modules/openseadragon"]["version"]


def _installed_version() -> str | None:
    try:
        return json.loads((PACKAGE / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def vendor_openseadragon() -> None:
    """Copy the pinned OpenSeadragon into the package, running `npm ci` first if needed."""
    version = _locked_version()
    stamp = VENDOR / "VERSION.txt"
    if (VENDOR / "openseadragon.min.js").is_file() and stamp.is_file() \
            and stamp.read_text().strip() == version:
        return
    if _installed_version() != version:
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("npm not found: install Node.js and npm (Debian: apt-get install "
                             "nodejs npm) to build the viewer's assets (OpenSeadragon)")
        done = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                              cwd=ROOT, check=False)
        if done.returncode != 0 or _installed_version() != version:
            raise SystemExit(f"npm ci failed (exit {done.returncode}): could not install "
                             f"openseadragon {version} from package-lock.json")
    build = PACKAGE / "build" / "openseadragon"
    VENDOR.mkdir(parents=True, exist_ok=True)
    shutil.copy2(build / "openseadragon.min.js", VENDOR)
    shutil.copytree(build / "images", VENDOR / "images", dirs_exist_ok=True)
    shutil.copy2(PACKAGE / "LICENSE.txt", VENDOR)
    stamp.write_text(version + "\n")


class BuildPyWithViewerAssets(build_py):
    """build_py that first bundles the viewer's front-end dependency."""

    def run(self):
        vendor_openseadragon()
        super().run()


class SdistWithViewerAssets(sdist):
    """sdist that carries the bundled copy, so a wheel builds from it without npm."""

    def run(self):
        vendor_openseadragon()
        super().run()


setup(cmdclass={"build_py": BuildPyWithViewerAssets, "sdist": SdistWithViewerAssets})
