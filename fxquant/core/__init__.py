"""The shared core under every feature package: node state, layer queries, files, metrics, reports.

The core imports no feature package (passes, quantsim, export, numeric_suite, layer_outputs, cli);
feature packages call it and never re-derive what it defines.
"""
