"""The foundation layer: file and path helpers that every other package of the suite may use.

It imports nothing from ``ntdh_bench``, ``datamodules``, ``models`` or ``experiments``, so the
layering ``experiments -> ntdh_bench -> models / datamodules -> ntdh_core`` has no cycle.
"""
