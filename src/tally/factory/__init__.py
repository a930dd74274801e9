"""The factory: LoRA fine-tuning on permitted datanet snapshots, evaluation, provenance, pipelines and jobs.

Imports `tally.datanets`, `tally.models`, `tally.engine` (the adapter registry file), `tally.ledger` and
`tally.influence`. The CLI (`tally.cli.factory`) and the API (`tally.api.factory_routes`) call
`service.train`, `evaluation.evaluate` and `pipeline.run_pipeline`; jobs queued by the API run in worker
processes (`worker`, `lease`), and `recovery` settles at start what a crash left. See docs/factory.md and
docs/reliability.md.
"""
