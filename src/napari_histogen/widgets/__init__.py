"""napari docks. Thin: they read layers, call ``napari_histogen.core`` and add layers."""

import gc

# Opening a dock imports this package on napari's GUI thread, and the allocations of that
# import start a full garbage-collector pass over napari's whole heap (about 0.1 s on a
# 2-core CPU: the largest stall of opening a dock, benchmarks/gui_latency.py). Objects alive
# now are moved out of the collector's passes instead. Every dock connects
# ``_runner.thaw_collector`` to the viewer's layer removals, so a layer removed later is
# still collected (its first full pass after a thaw costs the old time once).
gc.freeze()
