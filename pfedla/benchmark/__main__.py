"""``python -m pfedla.benchmark <name> [search|run|extend|proxy-check|render|all|status|commands] [--jobs N]
[--threads T]``.

Steps (``all``, the default, runs them in order): ``search`` each method's search on the proxy; ``run`` the final
runs at the chosen values (a cell is a split x method x seed); ``extend`` the cells whose validation curve still
rises at the last round, on to ``extend_rounds``; ``proxy-check`` runs the next-best trials of the checked methods
at full scale (``proxy_check`` in the yaml); ``render`` the results and tuning pages from the store. Every step
skips what is done and resumes what was cut (a run from its checkpoint, exactly), and runs ``--jobs`` at a time.
``status`` (not part of ``all``) prints how many final runs are done, partial and new, and the machine time the
rest needs, estimated from the finished ones. ``commands`` (not part of ``all``) prints the shell line of every final
run that may start now, for a scheduler or another machine sharing the folder; ``run`` then stores what they
finished without running it again.
"""

from __future__ import annotations

import argparse
import os
import sys

from pfedla.benchmark.paths import Places
from pfedla.benchmark.spec import load_spec
from pfedla.errors import ConfigError

STEPS = ("search", "run", "extend", "proxy-check", "render")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pfedla.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="conf/benchmark/<name>.yaml, or a path to a benchmark yaml")
    parser.add_argument("step", nargs="?", default="all", choices=(*STEPS, "all", "status", "commands"))
    parser.add_argument("--jobs", type=int, default=2, help="searches or runs at once")
    parser.add_argument("--threads", type=int, default=0, help="threads per job (0: cores / jobs)")
    parser.add_argument("--methods", nargs="+", help="only these methods (default: all of the yaml's)")
    parser.add_argument("--splits", nargs="+", help="only these splits (run, extend)")
    args = parser.parse_args(argv)
    from pfedla.benchmark import fallback, grid, render, search, status  # after argparse: --help stays instant

    try:
        spec = load_spec(args.name)
        places = Places.of(spec)
        methods = args.methods or list(spec.methods)
        splits = args.splits or list(spec.splits)
        for name, known, key in ((methods, spec.methods, "methods"), (splits, spec.splits, "splits")):
            unknown = sorted(set(name) - set(known))
            if unknown:
                raise ConfigError(f"--{key} {' '.join(unknown)}: not in {spec.name}'s {key} ({', '.join(known)})")
        if args.step == "status":
            print(status.report(spec, places, methods, splits, args.jobs))
            return
        threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
        if args.step == "commands":
            print("\n".join(grid.commands(spec, places, grid.final_cells(spec, places, methods, splits), threads)))
            return
        steps = STEPS if args.step == "all" else (args.step,)
        if "search" in steps and spec.search.reuse is not None:
            print(f"search: {spec.name} runs with {spec.search.reuse}'s chosen values ({places.searches})")
        elif "search" in steps:
            grid.in_parallel(lambda m: search.run_search(spec, m, places, threads), methods, args.jobs, "search")
        if "run" in steps:
            grid.run_cells(spec, places, grid.final_cells(spec, places, methods, splits), args.jobs, threads)
        if "extend" in steps:
            grid.run_cells(spec, places, grid.extension_cells(spec, places, methods, splits), args.jobs, threads)
        if "proxy-check" in steps and spec.proxy_check.top:
            checked = [m for m in grid.checked_methods(spec, places) if m in methods]
            grid.run_cells(spec, places, grid.proxy_check_cells(spec, places, checked), args.jobs, threads)
        if "render" in steps:
            render.render(spec, places)
    except (ConfigError, search.SearchFailed, fallback.NotSearched, grid.CellFailed) as err:
        print(f"pfedla.benchmark: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
