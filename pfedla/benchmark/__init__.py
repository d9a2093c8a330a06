"""``python -m pfedla.benchmark <name>``: a comparison no reviewer can fault, as one command (docs/DESIGN.md,
"Benchmarks"): equal searches on a proxy that never reads a test image, final runs on several splits and seeds,
runs still rising carried on, and one page of tables, curves and Holm-corrected verdicts."""
