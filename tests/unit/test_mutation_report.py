"""tools/mutation_report.py's rule for message-only mutants: it decides what the mutation score leaves out,
so it must not take a change of behaviour for a change of text."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "mutation_report", Path(__file__).resolve().parents[2] / "tools" / "mutation_report.py")
report = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(report)


def diff(old: str, new: str) -> str:
    return f"--- a\n+++ b\n@@ -1 +1 @@\n-{old}\n+{new}"


@pytest.mark.parametrize(("old", "new"), [
    ('    raise ValueError("set jwks_url or jwks_json")',
     '    raise ValueError("XXset jwks_url or jwks_jsonXX")'),
    ('    raise ValueError("set jwks_url or jwks_json")', '    raise ValueError(None)'),
    ('        raise InvalidToken(DenyReason.MISSING_CLAIM, detail=exc.claim) from None',
     '        raise InvalidToken(DenyReason.MISSING_CLAIM, detail=None) from None'),
    ('        raise InvalidToken(DenyReason.MISSING_TENANT, detail=self.tenant_claim)',
     '        raise InvalidToken(DenyReason.MISSING_TENANT, )'),
    ('                           detail=f"lifetime {min(lifetime, 1e12):.0f}s > {self.max_lifetime}s")',
     '                           )'),
    ('              "or pass --keys DIR", file=sys.stderr)',
     '              "OR PASS --KEYS DIR", file=sys.stderr)'),
    ("    raise NotFound(f\"request '{request_id[:64]}' not found\")",
     "    raise NotFound(f\"request '{request_id[:65]}' not found\")"),
    ('    raise ModelUnavailable("no GPU endpoint", retry_after=self.retry_after,',
     '    raise ModelUnavailable(retry_after=self.retry_after,'),
])
def test_message_text_changes_are_message_only(old, new):
    assert report.is_message_only(diff(old, new))


@pytest.mark.parametrize(("old", "new"), [
    # the reason, the status or an argument that is not the message
    ('        raise InvalidToken(DenyReason.MISSING_CLAIM, detail=exc.claim) from None',
     '        raise InvalidToken(None, detail=exc.claim) from None'),
    ('        raise InvalidToken(DenyReason.ALG_NOT_ALLOWED) from None',
     '        raise InvalidToken(None) from None'),
    ('        raise InvalidToken(DenyReason.MALFORMED_TOKEN, detail=type(exc).__name__) from None',
     '        raise InvalidToken(detail=type(exc).__name__) from None'),
    ('            raise ModelUnavailable(detail="corrupt", retry_after=5)',
     '            raise ModelUnavailable(detail="corrupt", retry_after=6)'),
    ('    raise BadRequest("no")', '    raise NotFound("no")'),
    # not a message at all
    ('    if iat is not None and iat > now + self.leeway:',
     '    if iat is not None and iat >= now + self.leeway:'),
    ('    return {"statusCode": status, "headers": {"Content-Type": JSON},',
     '    return {"statusCode": status, "XXheadersXX": {"Content-Type": JSON},'),
    ('    key = f"models/{tenant}/x"', '    key = f"XXmodels/{tenant}/xXX"'),
])
def test_anything_else_is_not(old, new):
    assert not report.is_message_only(diff(old, new))


def test_a_mutant_changing_two_lines_is_never_message_only():
    two = ('--- a\n+++ b\n-    raise ValueError("a")\n-    raise ValueError("b")\n'
           '+    raise ValueError("A")\n+    raise ValueError("B")')
    assert not report.is_message_only(two)


def test_equivalents_are_read_with_their_reasons(tmp_path, monkeypatch):
    listed = tmp_path / "eq.txt"
    listed.write_text("# comment\n\ntenantml.x__f__mutmut_1 the same call\n", encoding="utf-8")
    monkeypatch.setattr(report, "EQUIVALENT_FILE", listed)
    assert report.equivalents() == {"tenantml.x__f__mutmut_1": "the same call"}
