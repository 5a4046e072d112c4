"""Print the third-party requirements of one image flavour, one per line, for `pip -r`.

The list comes from pyproject.toml, so the image never drifts from the project:
- cpu: `[project] dependencies` as they are (faiss-cpu, onnxruntime).
- gpu: the same without faiss-cpu and onnxruntime, plus the `gpu` extra
  (faiss-gpu-cu12, onnxruntime-gpu). The CPU and GPU wheels of each pair write the same
  package directory (`faiss/`, `onnxruntime/`), so installing both and uninstalling one
  breaks the other; leaving the CPU ones out from the start avoids that.

torch is installed before this list (deploy/docker/install-deps.sh picks the build), and
the project itself after it with `pip install --no-deps .`.

Usage: python requirements.py {cpu,gpu} [path/to/pyproject.toml]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

FLAVOURS = ("cpu", "gpu")
# Distributions the gpu extra replaces (PEP 503 normalised names).
CPU_ONLY = {"faiss-cpu", "onnxruntime"}


def _name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement string."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"cannot read a package name from requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(flavour: str, pyproject: Path) -> list[str]:
    """The requirement strings to install for `flavour` ('cpu' or 'gpu')."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour {flavour!r} not supported; choose from {FLAVOURS}")
    project = tomllib.loads(pyproject.read_text())["project"]
    deps = list(project["dependencies"])
    if flavour == "cpu":
        return deps
    gpu = project.get("optional-dependencies", {}).get("gpu")
    if not gpu:
        raise ValueError(f"{pyproject} has no `gpu` extra; the gpu image needs one")
    return [d for d in deps if _name(d) not in CPU_ONLY] + list(gpu)


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        sys.stderr.write(__doc__ or "")
        return 2
    pyproject = Path(argv[2]) if len(argv) == 3 else Path("pyproject.toml")
    sys.stdout.write("\n".join(requirements(argv[1], pyproject)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
