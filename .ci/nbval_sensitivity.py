"""Show that the nbval check can fail: perturb a library function inside the kernel and expect a mismatch.

    python .ci/nbval_sensitivity.py [notebooks/00_welcome.ipynb]

A regression check that passes under any code is worth nothing. This script runs
``pytest --nbval-lax`` on one stored chapter twice:

1. with ``searchmorph_lite.losses.mse_loss`` returning its value + 1e-2 in the notebook's kernel (a
   ``sitecustomize`` on PYTHONPATH, which every Python process, the kernel too, imports at start-up): nbval must
   FAIL, and fail by an output mismatch in a checked cell (not by an exception in a cell);
2. unperturbed, under the same settings: nbval must PASS (so the failure in 1 came from the perturbation).

Chapter 00 prints MSE values in a checked cell and asserts nothing about them, so only nbval's output
comparison can catch the change. Exit 0 when both hold.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PERTURB = """\
import os
if os.environ.get("SEARCHMORPH_PERTURB") == "mse_loss+1e-2":
    import searchmorph_lite as sm
    import searchmorph_lite.losses as losses

    _mse = losses.mse_loss

    def mse_loss(*args, **kwargs):
        return _mse(*args, **kwargs) + 1e-2

    losses.mse_loss = sm.mse_loss = mse_loss
"""


def nbval(notebook: str, env: dict) -> tuple[int, str]:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "--nbval-lax",
        "--nbval-current-env",
        "--sanitize-with",
        "notebooks/sanitize.cfg",
        "-p",
        "no:cacheprovider",
        "-q",
        notebook,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def main() -> int:
    notebook = sys.argv[1] if len(sys.argv) > 1 else "notebooks/00_welcome.ipynb"
    with tempfile.TemporaryDirectory() as hook_dir:
        Path(hook_dir, "sitecustomize.py").write_text(PERTURB)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [hook_dir, os.environ.get("PYTHONPATH")]))}
        rc, out = nbval(notebook, {**env, "SEARCHMORPH_PERTURB": "mse_loss+1e-2"})
        mismatch = "mismatch" in out.lower() or "outputs differ" in out.lower()
        print(f"perturbed (mse_loss + 1e-2): pytest exit {rc}, output mismatch reported: {mismatch}")
        if rc == 0 or not mismatch:
            print(out[-4000:])
            print("nbval_sensitivity: FAILED: nbval did not catch a changed library result", file=sys.stderr)
            return 1
        rc, out = nbval(notebook, env)
        print(f"unperturbed: pytest exit {rc}")
        if rc != 0:
            print(out[-4000:])
            print("nbval_sensitivity: FAILED: the unperturbed chapter does not pass", file=sys.stderr)
            return 1
    print(f"nbval_sensitivity: OK: {notebook} fails when mse_loss changes by 1e-2 and passes when it does not")
    return 0


if __name__ == "__main__":
    sys.exit(main())
