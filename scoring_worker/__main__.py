"""``python -m scoring_worker``: what a Pipes subprocess or a scoring pod runs (see ``scoring_worker``)."""

from scoring_worker import main

raise SystemExit(main())
