"""``python -m benchmarks [--quick] [--out DIR]``."""

from .run import main

raise SystemExit(main())
