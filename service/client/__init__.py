"""The trainer-side client (httpx and the standard library only): push a run's checkpoints and
sampled responses to forgetwatch from a training loop without ever stalling or crashing it.

    client = ForgetwatchClient("http://forgetwatch:8700", token)
    client.run("qwen-grpo-stage2", base_model="/ckpts/base", method="grpo", probe_sets=["arith"])
    client.checkpoint(200, "/ckpts/step-200")
    client.samples(200, [{"prompt": "12+34=", "response": "46"}], probe_set="arith")
    client.close()
"""

from service.client._client import ForgetwatchClient
from service.client._journal import default_journal_path
from service.client._status import Detection, Forecast, RunStatus
from service.client._transport import ForgetwatchError

__all__ = ["Detection", "Forecast", "ForgetwatchClient", "ForgetwatchError", "RunStatus", "default_journal_path"]
