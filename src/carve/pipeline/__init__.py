"""The pipeline around the stages: the run's configuration, step glue, provenance and the ``carve`` command.

- ``run_config``: the config and sheet resolved into one frozen :class:`~carve.pipeline.run_config.Run`.
- ``workflow``: ``run_step``, what every Snakemake step script calls.
- ``provenance``: ``manifest.json`` and its verification.
- ``cli``, ``init_layout``: the ``carve`` command and ``carve init``.
- ``sheet``: the cases sheet; ``demo``, ``synth``: the synthetic demo.
- ``config_doc``: ``config/README.md`` from the schema.
"""
