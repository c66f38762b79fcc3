"""Two analyses of one checkpoint finishing at the same moment leave it `ready`, every time.

Once each transaction's status refresh saw the other analysis still running, and 3 checkpoints in
775 stayed `processing` forever with both analyses ready. Without the checkpoint row lock in
`set_analysis` this test finds stuck checkpoints in most rounds."""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from service.db.param_drift import set_analysis
from service.db.session import make_sessionmaker

ROUNDS = 40
KINDS = ("params", "responses")


def _finish_together(sessions: sessionmaker[Session], checkpoint_id: int) -> list[BaseException]:
    """Both analyses go `ready` in two transactions released at the same instant; their errors."""
    start = threading.Barrier(len(KINDS), timeout=30)
    errors: list[BaseException] = []

    def finish(kind: str) -> None:
        try:
            with sessions.begin() as session:
                session.execute(text("SELECT 1"))  # connection and transaction open before the race
                start.wait()
                set_analysis(session, checkpoint_id=checkpoint_id, kind=kind, status="ready")
        except BaseException as error:  # noqa: BLE001 - returned to the test
            errors.append(error)

    threads = [threading.Thread(target=finish, args=(kind,)) for kind in KINDS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_two_analyses_finishing_at_once_leave_the_checkpoint_ready(client: TestClient, base_model: str, engine: Engine,
                                                                   checkpoint_root: Path) -> None:
    weights = checkpoint_root / "w.safetensors"
    weights.write_bytes(b"x")
    assert client.post("/v1/runs", json={"name": "race", "base_model": base_model}).status_code == 201
    sessions = make_sessionmaker(engine)
    stuck = []
    for step in range(1, ROUNDS + 1):
        created = client.post("/v1/runs/race/checkpoints", json={"step": step, "uri": str(weights)})
        checkpoint_id = created.json()["id"]
        with sessions.begin() as session:
            for kind in KINDS:
                set_analysis(session, checkpoint_id=checkpoint_id, kind=kind, status="processing")
        assert _finish_together(sessions, checkpoint_id) == []
        with sessions() as session:
            status = session.execute(text("SELECT status FROM checkpoints WHERE id = :c"),
                                     {"c": checkpoint_id}).scalar()
        if status != "ready":
            stuck.append((step, status))
    assert stuck == []
