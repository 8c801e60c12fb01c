"""Running a parsed command, for every command group (depthcut.cli, depthcut.llm.cli): a user's error is one
line on stderr and a non-zero exit, a missing optional dependency names the extra that installs it."""
from __future__ import annotations

import argparse
import os
import sys

from .errors import DepthcutError


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command: user errors become one line on stderr and a non-zero exit code."""
    try:
        return int(args.func(args) or 0)
    except DepthcutError as e:
        if os.environ.get("DEPTHCUT_DEBUG"):
            raise
        print(f"depthcut: error: {' '.join(str(e).split())}", file=sys.stderr)   # always one line
        return e.exit_code
    except ImportError as e:
        extra = _extra_for(getattr(e, "name", None) or "")
        if extra is None or os.environ.get("DEPTHCUT_DEBUG"):
            raise
        print(f"depthcut: error: this command needs {e.name!r}, from the optional extra {extra!r}: "
              f"pip install 'depthcut[{extra}]' (see the README's Install section)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("depthcut: interrupted; finished table entries are cached and will be reused", file=sys.stderr)
        return 130


# optional dependencies -> the extra of pyproject.toml that installs them
EXTRAS = {"transformers": "llm", "peft": "llm", "gguf": "llm", "safetensors": "llm", "yaml": "llm",
          "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "sklearn": "data", "mlxtend": "data",
          "torch_pruning": "baselines", "lm_eval": "eval", "ray": "ray", "diffusers": "diffusion",
          "openvino": "openvino"}


def _extra_for(module: str) -> str | None:
    return EXTRAS.get(module.split(".")[0])
