"""checkov (static IaC analysis, from PyPI) finds nothing unjustified in the stack.

checkov lives in its own venv, ``.venv-checkov`` (``make test`` creates it), so its many
dependencies cannot disturb the project's pins. It scans both template.yaml as written and
the CloudFormation that SAM makes of it (the generated IAM roles, function URL and rule
target are only visible there). A finding is either fixed in the template or skipped there
with a reason (``Metadata: checkov: skip: - id, comment``); docs/security.md lists them.

Without the venv this test fails (it never silently passes in CI); set
``LAMBDAGRAD_ALLOW_NO_CHECKOV=1`` to skip it on a machine that cannot install checkov.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from lambdagrad.local.sam import load_template, localize, to_cloudformation

ROOT = Path(__file__).resolve().parents[2]
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"

#: Checks that must have run and passed, so a scan that silently covers nothing fails.
MUST_PASS = {
    "CKV_AWS_19": "bucket encrypted at rest",
    "CKV_AWS_21": "bucket versioning",
    "CKV_AWS_53": "block public ACLs",
    "CKV_AWS_54": "block public policy",
    "CKV_AWS_55": "ignore public ACLs",
    "CKV_AWS_56": "restrict public buckets",
    "CKV_AWS_111": "no IAM write access without constraints",
    "CKV_AWS_258": "function URL requires auth",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    if not CHECKOV.exists():
        if os.environ.get("LAMBDAGRAD_ALLOW_NO_CHECKOV") == "1":
            pytest.skip(f"{CHECKOV} missing and LAMBDAGRAD_ALLOW_NO_CHECKOV=1")
        pytest.fail(f"{CHECKOV} is missing: run `make test` (it creates .venv-checkov)")
    localized, _ = localize(
        load_template(ROOT / "template.yaml"), base_dir=ROOT, staging_bucket="staging"
    )
    transformed = tmp_path_factory.mktemp("checkov") / "template.cfn.json"
    transformed.write_text(json.dumps(to_cloudformation(localized, region="us-east-1")))
    args = ["--framework", "cloudformation", "--skip-download", "--compact", "-o", "json"]
    proc = subprocess.run(
        [str(CHECKOV), *args, "-f", str(ROOT / "template.yaml"), "-f", str(transformed)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov exited {proc.returncode} without a JSON report:\n{proc.stderr}")
    return doc[0] if isinstance(doc, list) else doc


def test_checkov_finds_nothing_unjustified(report):
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in report["results"]["failed_checks"]
    ]
    assert not failed, "fix these in template.yaml or skip them there with a reason:\n" + (
        "\n".join(failed)
    )
    assert report["summary"]["parsing_errors"] == 0


def test_every_skip_gives_a_reason(report):
    skipped = report["results"]["skipped_checks"]
    assert skipped, "the template's justified skips were not seen: is Metadata intact?"
    vague = [
        f"{c['check_id']} {c['resource']}"
        for c in skipped
        if len(c["check_result"].get("suppress_comment", "").strip()) < 40
    ]
    assert not vague, f"skipped without a real reason: {vague}"


def test_the_security_checks_ran_and_passed(report):
    passed = {c["check_id"] for c in report["results"]["passed_checks"]}
    missing = {cid: what for cid, what in MUST_PASS.items() if cid not in passed}
    assert not missing, f"expected checks did not pass: {missing}"
