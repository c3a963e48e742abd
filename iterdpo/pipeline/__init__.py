"""The pipeline engine: run context, stages and their derived keys, artifacts, run lock, driver.

- :mod:`.context`: :class:`Run`, the run directory + config, and where models come from
  (the training reference is decided there and nowhere else);
- :mod:`.engine`: :class:`Stage`, the engine that runs one (rank gating, atomic commit,
  skip-if-done, keys derived from declared fields and inputs);
- :mod:`.artifacts`: the registry artifact name -> file + Arrow schema, checked on read;
- :mod:`.lock`: the run lock;
- :mod:`.driver`: start_run / run_stage / end_iteration / finish_run / run_all;
- :mod:`.summary`: summary.json.

The stages themselves live in :mod:`iterdpo.stages`, the pipelines (mappings of stage
names to stages) next to them.
"""
