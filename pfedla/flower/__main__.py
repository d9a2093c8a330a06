"""``python -m pfedla.flower local --nodes N -- <overrides>`` (pfedla/flower/local.py)."""

import sys

from pfedla.flower.local import main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "local":
        sys.exit("usage: python -m pfedla.flower local --nodes N [--run-dir DIR] -- <python -m pfedla.run overrides>")
    main(sys.argv[2:])
