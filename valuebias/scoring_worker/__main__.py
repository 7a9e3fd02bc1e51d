"""``python -m valuebias.scoring_worker``: what a Pipes subprocess or a scoring pod runs (see ``valuebias.scoring_worker``)."""

from valuebias.scoring_worker.worker import main

raise SystemExit(main())
