"""The third floor: the course. Profiles (each method's config plus the course's data, world and evaluation fields),
the tiny preference world and the rehearsal's stand-ins, where a profile's data comes from, the stage cache and the
table of stages the lessons build or load, comparisons, the multi-seed study and plots.

Imports from :mod:`rrhf_lite.methods` and :mod:`rrhf_lite.core`; nothing below imports from here."""
