"""The trainer-side client (httpx and the standard library only): push a run's checkpoints and
sampled responses to forgetwatch from a training loop without ever stalling or crashing it.

    client = ForgetwatchClient("http://forgetwatch:8700", token)
    client.run("qwen-grpo-stage2", base_model="/ckpts/base", method="grpo", probe_sets=["arith"])
    client.checkpoint(200, "/ckpts/step-200")
    client.samples(200, [{"prompt": "12+34=", "response": "46"}], probe_set="arith")
    client.close()

Reading back (runs, checkpoints, drift, labels, status; every page followed):

    with ForgetwatchReader("http://forgetwatch:8700", token) as fw:
        runs = list(fw.runs(method="grpo"))
"""

from forgetwatch_client._client import ForgetwatchClient
from forgetwatch_client._delivery import Refusal
from forgetwatch_client._journal import default_journal_path
from forgetwatch_client._reader import ForgetwatchReader, to_pandas
from forgetwatch_client._status import Detection, Forecast, RunStatus
from forgetwatch_client._transport import ForgetwatchError

__all__ = ["Detection", "Forecast", "ForgetwatchClient", "ForgetwatchError", "ForgetwatchReader", "Refusal", "RunStatus",
           "default_journal_path", "to_pandas"]
