"""The API processes and the CLI's queueing commands load no model library: they queue analyses by
task name (`service.queue.defer`) and compute only numpy statistics. Importing torch made every API
process 441 MB (194 MB without it) and 1.6 s slower to start."""

import json
import subprocess
import sys

MODEL_LIBRARIES = ["torch", "transformers", "safetensors.torch", "peft", "sentence_transformers"]


def test_the_api_and_the_cli_import_no_model_library() -> None:
    code = (
        "import sys, json\n"
        "import service.api.app, service.cli, service.queue.defer\n"
        f"print(json.dumps([m for m in {MODEL_LIBRARIES!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_every_name_the_api_queues_is_a_task_the_workers_run() -> None:
    from service.queue import defer, param_tasks, preview_tasks, probe_tasks, sample_tasks  # noqa: F401 - registers
    from service.queue.tasks import blueprint

    queued = {defer.PARAM_PLAN, defer.PARAM_PART, defer.PARAM_AGGREGATE, defer.SPECTRAL_BASE_TASK, defer.PROBE_TASK,
              defer.BASE_TASK, defer.SAMPLE_TASK, defer.PREVIEW_TASK}
    assert queued <= set(blueprint.tasks), sorted(queued - set(blueprint.tasks))
