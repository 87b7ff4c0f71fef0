"""Run many mergekit merges in one process, each exactly as `mergekit-yaml CONFIG OUT` would run it.

    /path/to/mergekit-env/bin/python benchmarks/_mergekit_batch.py JOBS.json

JOBS.json: a list of {"config": path, "out": path, "seed": int | null}. mergekit's start-up (imports,
architecture tables) costs several seconds, which is most of a tiny merge; paying it once makes a parity sweep
of a hundred configs take a minute. Each job goes through the same calls as mergekit's `run_yaml.main`
(`MergeConfiguration.model_validate` on the YAML, then `run_merge`) with the options
`--no-copy-tokenizer --quiet --lazy-unpickle` and `--random-seed` when the job has a seed. A failure is recorded
in `<out>.error` and the batch goes on. Runs under mergekit's own interpreter: imports nothing of ours.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions


def run_job(config: str, out: str, seed: int | None) -> None:
    options = MergeOptions(copy_tokenizer=False, quiet=True, lazy_unpickle=True, random_seed=seed)
    options.apply_global_options()
    source = Path(config).read_text(encoding="utf-8")
    merge_config = MergeConfiguration.model_validate(yaml.safe_load(source))
    run_merge(merge_config, out, options=options, config_source=source)


def main(jobs_file: str) -> None:
    for job in json.loads(Path(jobs_file).read_text()):
        try:
            run_job(job["config"], job["out"], job.get("seed"))
        except Exception:
            Path(job["out"] + ".error").write_text(traceback.format_exc())


if __name__ == "__main__":
    main(sys.argv[1])
