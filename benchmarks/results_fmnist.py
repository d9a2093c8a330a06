"""docs/RESULTS.md's comparison (the protocol before pfedla.benchmark): python benchmarks/results_fmnist.py
run|render|extend ... The code is pfedla/benchmark/fmnist_results.py (its statistics: fmnist_verdicts.py)."""

from pfedla.benchmark.fmnist_results import main

if __name__ == "__main__":
    main()
