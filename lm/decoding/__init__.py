"""Decoding: parameters and requests (``params``), rows and their shared state (``batch``),
strategies (``sampling``, ``beam``), text streaming (``streaming``), the step-wise session
(``engine``) and the batch ``generate`` loop over it. Imports only ``lm.models`` and
``lm.context`` below it; the public names are re-exported by ``lm``."""
