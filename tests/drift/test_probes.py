import json
import subprocess
import sys

import pytest

from drift.probes import ProbeItem, ProbeSet, dumps_probe_set, load_probe_set, loads_probe_set, save_probe_set

HEADER = '{"probe_set": "arith", "domain": "ood"}'


def test_header_gives_name_and_domain_and_items_keep_optional_fields():
    text = HEADER + """
{"prompt": "2+2=", "reference": "4", "answer": "4"}

{"prompt": "Write a poem."}
"""
    ps = loads_probe_set(text)
    assert (ps.name, ps.domain, len(ps)) == ("arith", "ood", 2)
    assert ps.items[0] == ProbeItem("2+2=", reference="4", answer="4")
    assert ps.items[1] == ProbeItem("Write a poem.")


def test_loader_arguments_replace_a_missing_header():
    ps = loads_probe_set('{"prompt": "hi"}', name="greet", domain="in_domain")
    assert (ps.name, ps.domain) == ("greet", "in_domain")


def test_file_name_is_the_default_name(tmp_path):
    path = tmp_path / "capitals.jsonl"
    path.write_text('{"prompt": "Capital of France?", "reference": " Paris"}\n')
    ps = load_probe_set(path, domain="ood")
    assert ps.name == "capitals"


def test_round_trip_through_a_file(tmp_path):
    ps = ProbeSet("s", "in_domain", (ProbeItem("a", "b", "c"), ProbeItem("ünïcode ✓")))
    save_probe_set(ps, tmp_path / "s.jsonl")
    assert load_probe_set(tmp_path / "s.jsonl") == ps
    assert loads_probe_set(dumps_probe_set(ps)).fingerprint() == ps.fingerprint()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ('["prompt"]', "expected a JSON object"),
        ('{"prompt": ""}', "'prompt' must be a non-empty string"),
        ('{"prompt": 3}', "'prompt' must be a non-empty string"),
        ('{"prompt": "x", "refrence": "y"}', "unknown keys ['refrence']"),
        ('{"prompt": "x", "answer": 4}', "'answer' must be a non-empty string"),
    ],
)
def test_bad_lines_raise_value_errors_quoting_the_line(line, message):
    with pytest.raises(ValueError, match="<string>:2") as err:
        loads_probe_set(HEADER + "\n" + line)
    assert message in str(err.value)
    assert line[:10] in str(err.value)


def test_header_problems_are_reported():
    with pytest.raises(ValueError, match="only allowed as the first line"):
        loads_probe_set('{"prompt": "x"}\n' + HEADER)
    with pytest.raises(ValueError, match="disagrees with the header"):
        loads_probe_set(HEADER + '\n{"prompt": "x"}', domain="in_domain")
    with pytest.raises(ValueError, match="domain must be one of"):
        loads_probe_set('{"prompt": "x"}', name="n", domain="ID")
    with pytest.raises(ValueError, match="no domain"):
        loads_probe_set('{"prompt": "x"}', name="n")
    with pytest.raises(ValueError, match="has no items"):
        loads_probe_set(HEADER + "\n\n")


def test_drift_modules_import_no_service_stack():
    code = (
        "import sys, json\n"
        "import drift.probes, drift.models, drift.divergence, drift.base_cache, drift.forgetting\n"
        "import drift.embeddings, drift.shift, drift.diversity\n"
        "bad = ['fastapi', 'sqlalchemy', 'procrastinate', 'prometheus_client', 'alembic', 'psycopg', 'service']\n"
        "print(json.dumps([m for m in sys.modules if m.split('.')[0] in bad]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_exact_match_accepts_any_listed_alternative() -> None:
    from drift.forgetting import exact_match

    assert exact_match(" df\n", "de|df|ef")
    assert not exact_match("fd", "de|df|ef")
    assert exact_match("194", "194") and not exact_match("19", "194")
