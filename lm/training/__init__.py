"""Training: the loop (``trainer``), its counters (``trainstate``), the run directory
(``rundir``), precision, distributed helpers, data batching and the optimizer. Imports the
models, the run config and checkpoints below it; nothing in decoding or the service imports it."""
