"""Export a model artifact's scoring path to ONNX, for servers that are not Python, and verify it with ONNX
Runtime against the model's own scores.

    python jobs/export.py --model artifacts/student --out artifacts/student-onnx

Needs the optional extra: pip install -e '.[export]' (onnx, onnxscript, onnxruntime).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys

from dien.artifacts import ArtifactError, load_artifact
from dien.export import ExportError, export_onnx


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="artifact directory")
    parser.add_argument("--out", required=True, help="export directory to create (must not exist)")
    parser.add_argument("--check-rows", type=int, default=256,
                        help="random rows the exported model is compared with ours on (default: 256)")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="largest accepted |ONNX Runtime - ours| probability difference (default: 1e-05)")
    args = parser.parse_args()
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        print(f"error: exporting needs {', '.join(missing)}: pip install -e '.[export]'", file=sys.stderr)
        return 2
    try:
        artifact = load_artifact(args.model)
        report = export_onnx(artifact, args.out, check_rows=args.check_rows, tolerance=args.tolerance)
    except (ArtifactError, ExportError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported {artifact.name} {artifact.manifest.get('version')} to {report.path} in {report.seconds:.0f} s; "
          f"ONNX Runtime matches ours within {report.max_abs_diff:.2g} on {report.rows_checked} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
