"""Which top-level packages does Wan2GP need to import ``wgp`` (as ``shared/api.py``'s ``init`` does), and which of
them are missing from this python? Run with the python that will run Wan2GP:

    python bench/gpu/wan2gp_real/import_closure.py --wan2gp /path/to/Wan2GP [--standins] [--json out.json]

It imports ``wgp`` from the checkout (cwd = the checkout, ``sys.argv`` = ``wgp.py``, as the API does) in a fresh
process; every ``ModuleNotFoundError`` is recorded and the missing module replaced by an inert placeholder, and
the import retried, until ``wgp`` imports or fails otherwise. ``--standins`` puts ./standins (gradio) first on
the path; ``--cpu`` answers the few CUDA queries wgp makes at import (device capability, properties) so that
the probe runs on a machine without a GPU. Prints one line per missing top-level package and exits 0 only when
nothing was missing. The placeholders exist only inside this probe: a real run needs the packages (or a
stand-in module on purpose).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

PROBE = r"""
import importlib, importlib.abc, importlib.machinery, json, os, sys, time, traceback, types
root, out = sys.argv[1], sys.argv[2]
missing, tried = [], 0


class Placeholder(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__init__": lambda self, *a, **k: None, "__call__": lambda self, *a, **k: None})


class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in missing:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        m = Placeholder(spec.name)
        m.__path__ = []
        return m

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, Finder())
if os.environ.get("WGP_PROBE_FAKE_CUDA") == "1":  # --cpu: what wgp asks of the GPU at import, answered
    import torch
    props = types.SimpleNamespace(total_memory=80 << 30, name="probe", major=9, minor=0, multi_processor_count=132)
    torch.cuda.get_device_capability = lambda *a, **k: (9, 0)
    torch.cuda.get_device_properties = lambda *a, **k: props
    torch.cuda.get_device_name = lambda *a, **k: "probe"
    torch.cuda.mem_get_info = lambda *a, **k: (80 << 30, 80 << 30)
    torch.cuda.current_device = lambda *a, **k: 0
sys.path.insert(0, root)
os.chdir(root)
sys.argv = ["wgp.py"]
result = {"missing": missing, "ok": False, "error": None}
t0 = time.time()
while tried < 200:
    tried += 1
    try:
        importlib.import_module("wgp")
        result["ok"] = True
        break
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if not top or top in missing:
            result["error"] = traceback.format_exc()[-6000:]
            break
        missing.append(top)
        ours = ("models.", "shared.", "preprocessing.", "postprocessing.")
        for name in [n for n in sys.modules if n == "wgp" or n.startswith(ours)]:
            del sys.modules[name]
    except BaseException as exc:
        result["error"] = traceback.format_exc()[-6000:]
        break
result["seconds"] = round(time.time() - t0, 1)
result["loaded"] = sorted({n.split(".")[0] for n in sys.modules})
json.dump(result, open(out, "w"))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wan2gp", required=True, type=Path, help="a Wan2GP checkout (wgp.py, shared/api.py)")
    ap.add_argument("--standins", action="store_true", help="put bench/gpu/wan2gp_real/standins first on the path")
    ap.add_argument("--json", type=Path, help="write the result here too")
    ap.add_argument("--cpu", action="store_true", help="answer the CUDA queries wgp makes at import (no GPU here)")
    args = ap.parse_args()
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"wgp-import-{os.getpid()}.json"
    env = dict(os.environ)
    if args.cpu:
        env["WGP_PROBE_FAKE_CUDA"] = "1"
    if args.standins:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE / "standins"), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", PROBE, str(args.wan2gp.resolve()), str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    if not out.is_file():
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        return 2
    result = json.loads(out.read_text())
    out.unlink()
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    for name in result["missing"]:
        print(f"missing: {name}")
    if result["error"]:
        print(f"import failed after the placeholders:\n{result['error']}")
    print(f"wgp imported: {result['ok']} ({result['seconds']} s; {len(result['missing'])} missing)")
    return 0 if result["ok"] and not result["missing"] else 1


if __name__ == "__main__":
    sys.exit(main())
