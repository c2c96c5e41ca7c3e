"""Write the generated code of every example at -O0/-O1/-O2 for both targets (and with each transform) to a folder.

Run it before and after a refactor and `diff -r` the two folders: a behaviour-preserving change leaves them
byte-identical.  `python tools/snapshot_codegen.py OUT_DIR`
"""

from __future__ import annotations

import sys
from pathlib import Path

import nnspec.generated as generated

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml")) + sorted((ROOT / "examples" / "small").glob("*.yaml"))
TRANSFORMS = {"bf16": {"dtype": "bf16"}, "fp16": {"dtype": "fp16"}, "lora": {"lora": ["*:4"]}}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for spec in EXAMPLES:
        for target in ("torch", "triton"):
            for opt in (0, 1, 2):
                variants: dict[str, dict] = {"plain": {}}
                if opt == 2:
                    variants.update(TRANSFORMS)
                for tag, transforms in variants.items():
                    name = f"{spec.stem}.{target}.O{opt}.{tag}"
                    try:
                        lines: list[str] = []
                        compiled = generated.compile_spec(spec, target=target, opt=opt, explain=lines,
                                                          transforms=transforms or None)
                        text = compiled.source + "\n# ---- explain ----\n" + "\n".join(lines) + "\n"
                    except Exception as exc:  # an example a transform refuses is part of the snapshot too
                        text = f"error: {type(exc).__name__}: {exc}\n"
                    (out / f"{name}.py.txt").write_text(text)
    print(f"wrote {len(list(out.iterdir()))} files to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
