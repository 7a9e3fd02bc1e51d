"""The scoring worker: one scoring partition, run out of process through Dagster Pipes.

``python -m valuebias.scoring_worker`` is what runs in a Pipes subprocess on this machine (the default)
or in a Kubernetes pod on a GPU node (``scoring.launcher: kubernetes``). Its task arrives as the Pipes
*extras* (a JSON object, built by :class:`valuebias.resources.scoring_launcher.ScoringLauncher`):

- ``task``: ``rm_word_scores``, ``rm_vocabulary_sweep``, ``lm_next_token_logprobs`` or ``lm_word_logprobs``;
- ``model``: the registry entry (``model_id``, ``source``, ``settings``, ``variant``, ``vocabulary_sweep``);
- ``storage``: where product data lives (:meth:`ObjectStore.to_spec`: a URI and retry settings, never
  credentials: those come from the worker's environment);
- ``inputs`` / ``outputs``: storage keys to read and to write;
- ``demo_dir``, ``base_dir``, ``batch_size``, ``threads``, ``device``, ``word_rule``;
- ``digest_cache``: the file of cached weight digests (``<state_dir>/content_digests.json``), used when
  this process can see it (a subprocess on the same machine), else every digest is computed here;
- ``dequantised_dir``: where de-quantised copies of GGUF models are cached (``<state_dir>/dequantised``).

Every task computes the model's content identity where the weights are (``valuebias.model_content``) and
reports it as ``content`` metadata with the rest of the provenance. The ``identify`` task does only that
(a state recorded before content identities existed adopts its outputs with it).

The worker reads its inputs from storage, runs the model (``valuebias.rm_scoring`` /
``valuebias.lm_scoring``, the science), writes its outputs to storage (each write atomic), logs progress
to the run's log and reports the materialization (metadata and a content-hash data version) back to
Dagster. It imports ``dagster_pipes``, never ``dagster``.
"""

from valuebias.scoring_worker.worker import (ERROR_FILE_ENV, WORKER_MODULE,  # noqa: F401
                                             main, parse_progress, progress_line, run_task)
