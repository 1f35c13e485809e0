"""sglang-nwor-scv: no-write-on-reject KV staging (NWOR) and fused, graph-mode
speculative verification (SCV) for SGLang.

Importing this package needs no GPU and patches nothing; SGLang calls
``sglang_nwor_scv.plugin:register`` through the ``sglang.srt.plugins`` entry point.
"""

__version__ = "0.1.0"
