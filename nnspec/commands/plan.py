"""`nnspec plan SPEC --tp N --pp N`: the distributed plans derived from a spec, without torch.

`--tp N` lists each linear's tensor-parallel style and why (its axes), the head counts made local, what stays
replicated and why, and the plan as Hugging Face `base_model_tp_plan` / model `_tp_plan` dicts (`--json`);
`--sequence-parallel` plans sequence parallelism too; `--pp N` lists the pipeline stages balanced by the cost model.
A spec that cannot be sharded or split as asked exits 1 with the reason at its place in the spec.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

EXIT_SPEC, EXIT_USAGE = 1, 2


def register(app: typer.Typer) -> None:
    @app.command("plan")
    def plan_cmd(
        spec: Annotated[Path, typer.Argument(help="the spec file (YAML)")],
        tp: Annotated[int, typer.Option("--tp", help="tensor-parallel size (0: no tensor-parallel plan)")] = 0,
        pp: Annotated[int, typer.Option("--pp", help="pipeline stages (0: no pipeline plan)")] = 0,
        by: Annotated[str, typer.Option("--by", metavar="[flops|params]",
                                        help="balance stages by 'flops' or 'params'")] = "flops",
        seq: Annotated[int, typer.Option("--seq", help="sequence length the stage FLOPs are counted at")] = 1,
        sequence_parallel: Annotated[bool, typer.Option("--sequence-parallel", help="plan sequence parallelism too "
                                                        "(norms split by position, blocks gather input)")] = False,
        set_: Annotated[list[str] | None, typer.Option("--set", metavar="NAME=VALUE",
                                                       help="override a dim/option: name=value")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print the plans as JSON")] = False,
    ) -> None:
        """Derive tensor-parallel and pipeline plans from a spec's named axes and cost model."""
        from nnspec.cli import _fail, parse_sets
        from nnspec.compiler.elaborate import UsageError
        from nnspec.compiler.stage_split import split_stages
        from nnspec.compiler.tp_plan import PlanError, derive_tp_plan
        from nnspec.errors import SpecError
        from nnspec.pipeline import Pipeline

        if tp < 0 or pp < 0 or (tp == 0 and pp == 0):
            print("nnspec: error: say what to plan: --tp N and/or --pp N (N >= 1)", file=sys.stderr)
            raise typer.Exit(EXIT_USAGE)
        report: dict[str, Any] = {"spec": str(spec)}
        lines: list[str] = []
        try:
            model = Pipeline(spec, overrides=parse_sets(set_ or [])).checked.model
            if tp:
                plan = derive_tp_plan(model, tp, sequence_parallel=sequence_parallel)
                report["tp"] = {"size": tp, "sequence_parallel": sequence_parallel,
                                "base_model_tp_plan": plan.hf(), "tp_plan": plan.hf_model(),
                                "local_dims": plan.local_dims, "notes": plan.notes,
                                "rules": [{"path": r.path, "style": r.hf_style, "axis": r.axis, "why": r.why}
                                          for r in plan.styles()]}
                lines += plan.explain()
            if pp:
                stages = split_stages(model, pp, by=by, seq=seq)
                report["pp"] = {"stages": [{"first": s.first, "stop": s.stop, by: s.cost} for s in stages.stages],
                                "split_points": stages.split_points()}
                lines += stages.explain()
        except SpecError as err:
            _fail(err, as_json)
        except PlanError as err:
            print(f"nnspec: {err}" if err.span is None else str(err), file=sys.stderr)
            raise typer.Exit(EXIT_SPEC) from None
        except (UsageError, FileNotFoundError) as err:
            print(f"nnspec: error: {err}", file=sys.stderr)
            raise typer.Exit(EXIT_USAGE) from None
        if as_json:
            print(json.dumps(report, indent=2))
        else:
            print("\n".join(lines))
