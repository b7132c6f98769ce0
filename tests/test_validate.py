"""`reconciler validate`: schema checks, cross-checks and error reporting on real files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.conftest import ECHO_MANIFESTS, ECHO_TEMPLATE, PROJECT, cli, cli_process

LINE = re.compile(r"^(?P<file>[^:]+)(:(?P<line>\d+))?: (?P<pointer>/\S*): (?P<message>.+)$")


def problems(result) -> list[dict[str, str]]:
    """Problem lines of a failed validate, parsed; every line must name a file."""
    assert result.code == 1, result.out + result.err
    assert "Traceback" not in result.err
    parsed = []
    for line in result.lines:
        if line.startswith("error: "):
            continue
        m = LINE.match(line)
        assert m, f"not FILE: /pointer: message: {line!r}"
        parsed.append(m.groupdict())
    assert parsed, result.err
    return parsed


def only(result) -> dict[str, str]:
    found = problems(result)
    assert len(found) == 1, found
    return found[0]


def test_the_projects_own_manifests_are_valid():
    result = cli("validate", "--root", PROJECT)
    assert result.code == 0, result.err
    assert result.out.startswith("valid: ")


def test_valid_repository_exits_0_and_counts(echo_repo: Path):
    result = cli("validate", "--root", echo_repo, "--json")
    assert result.code == 0, result.err
    assert '"valid": true' in result.out
    assert '"deployments": 1' in result.out


def test_root_given_before_the_command_works_too(echo_repo: Path):
    assert cli("--root", echo_repo, "validate").code == 0


# -- schema ---------------------------------------------------------------------------------


def test_typo_in_a_field_is_an_error_with_did_you_mean_and_line(gitops):
    root = gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE.replace("    image:", "    imgae:"),
            "manifests/echo.yaml": ECHO_MANIFESTS,
        }
    )
    found = problems(cli("validate", "--root", root))
    typo = next(p for p in found if "imgae" in p["message"])
    assert typo["file"] == "templates/echo.yaml"
    assert typo["pointer"] == "/spec/container/imgae"
    assert "did you mean 'image'" in typo["message"]
    assert typo["line"] == "16"
    assert any("missing required field 'image'" in p["message"] for p in found)


def test_missing_required_field(gitops):
    root = gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "manifests/echo.yaml": ECHO_MANIFESTS.replace(
                "  configurationId: echo-config\n", "  targetStatus: RUNNING\n"
            ),
        }
    )
    p = only(cli("validate", "--root", root))
    assert p["pointer"] == "/spec"
    assert "missing required field 'configurationId'" in p["message"]


def test_number_where_text_is_expected_suggests_quoting(gitops):
    manifests = ECHO_MANIFESTS.replace(
        "  inputArtifactBindings:",
        "  parameterBindings:\n    - key: greeting\n      value: 1.10\n  inputArtifactBindings:",
    )
    root = gitops({"templates/echo.yaml": ECHO_TEMPLATE, "manifests/echo.yaml": manifests})
    p = only(cli("validate", "--root", root))
    assert p["pointer"] == "/spec/parameterBindings/0/value"
    assert "must be a string" in p["message"] and "quote" in p["message"]


@pytest.mark.parametrize("name", ["abc", "has space", "x" * 65, "ümlaut"])
def test_names_must_match_the_ai_core_id_pattern(gitops, name):
    root = gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "manifests/echo.yaml": ECHO_MANIFESTS.replace("  name: echo\n", f"  name: '{name}'\n"),
        }
    )
    p = only(cli("validate", "--root", root))
    assert p["pointer"] == "/metadata/name"
    assert "4 to 64 letters" in p["message"]


def test_unknown_kind_and_wrong_api_version(gitops):
    root = gitops(
        {
            "manifests/a.yaml": "apiVersion: reconciler/v1\nkind: Deploymnet\nmetadata: {name: abcd}\n",
            "manifests/b.yaml": "apiVersion: ai.sap.com/v1alpha1\nkind: Deployment\nmetadata: {name: abcd}\n",
        }
    )
    found = problems(cli("validate", "--root", root))
    assert {p["file"] for p in found} == {"manifests/a.yaml", "manifests/b.yaml"}
    kind = next(p for p in found if p["file"] == "manifests/a.yaml")
    assert kind["pointer"] == "/kind" and "did you mean 'Deployment'" in kind["message"]
    api = next(p for p in found if p["file"] == "manifests/b.yaml")
    assert api["pointer"] == "/apiVersion" and "reconciler/v1" in api["message"]


def test_invalid_target_status_lists_choices(gitops):
    root = gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "manifests/echo.yaml": ECHO_MANIFESTS + "  targetStatus: DELETED\n",
        }
    )
    p = only(cli("validate", "--root", root))
    assert p["pointer"] == "/spec/targetStatus"
    assert "RUNNING, STOPPED" in p["message"]


# -- cross-checks ---------------------------------------------------------------------------


def test_duplicate_names_per_kind_and_resource_group(gitops):
    dup = ECHO_MANIFESTS.split("---")[2]  # the Deployment
    root = gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "manifests/echo.yaml": ECHO_MANIFESTS,
            "manifests/zz-dup.yaml": dup,
        }
    )
    p = only(cli("validate", "--root", root))
    assert p["file"] == "manifests/zz-dup.yaml" and p["pointer"] == "/metadata/name"
    assert "duplicate Deployment 'echo'" in p["message"] and "manifests/echo.yaml" in p["message"]


def test_same_name_in_another_resource_group_or_kind_is_fine(gitops):
    other_rg = ECHO_MANIFESTS.replace("metadata:\n", "metadata:\n  resourceGroup: team-b\n")
    root = gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "manifests/echo.yaml": ECHO_MANIFESTS,
            "manifests/team-b.yaml": other_rg,
        }
    )
    result = cli("validate", "--root", root)
    assert result.code == 0, result.err
    assert "2 deployments" in result.out


def test_duplicate_templates_are_reported(gitops):
    root = gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "templates/zz-copy.yaml": ECHO_TEMPLATE,
            "manifests/echo.yaml": ECHO_MANIFESTS,
        }
    )
    p = only(cli("validate", "--root", root))
    assert p["file"] == "templates/zz-copy.yaml"
    assert "duplicate ServingTemplate 'echo-serving'" in p["message"]


def test_configuration_names_an_unknown_executable(gitops):
    root = gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "manifests/echo.yaml": ECHO_MANIFESTS.replace(
                "executableId: echo-serving", "executableId: echo-servin"
            ),
        }
    )
    p = only(cli("validate", "--root", root))
    assert p["pointer"] == "/spec/executableId"
    assert "executable 'echo-servin' not found" in p["message"]
    assert "did you mean 'echo-serving'" in p["message"]


def test_configuration_must_use_the_executables_scenario(gitops):
    root = gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "manifests/echo.yaml": ECHO_MANIFESTS.replace(
                "  scenarioId: echo\n  inputArtifact", "  scenarioId: other\n  inputArtifact"
            ),
        }
    )
    p = only(cli("validate", "--root", root))
    assert p["pointer"] == "/spec/scenarioId"
    assert "belongs to scenario 'echo', not 'other'" in p["message"]


def test_binding_keys_must_be_declared_inputs(gitops):
    manifests = ECHO_MANIFESTS.replace(
        "  inputArtifactBindings:\n    - key: model\n",
        "  parameterBindings:\n    - key: greting\n      value: hi\n"
        "  inputArtifactBindings:\n    - key: model\n      artifactId: echo-model\n    - key: weights\n",
    )
    root = gitops({"templates/echo.yaml": ECHO_TEMPLATE, "manifests/echo.yaml": manifests})
    found = problems(cli("validate", "--root", root))
    by_pointer = {p["pointer"]: p["message"] for p in found}
    assert "has no parameter 'greting'" in by_pointer["/spec/parameterBindings/0/key"]
    assert "did you mean 'greeting'" in by_pointer["/spec/parameterBindings/0/key"]
    assert "has no artifact input 'weights'" in by_pointer["/spec/inputArtifactBindings/1/key"]


def test_a_key_bound_twice_is_an_error(gitops):
    manifests = ECHO_MANIFESTS.replace(
        "  inputArtifactBindings:",
        "  parameterBindings:\n    - key: greeting\n      value: a\n    - key: greeting\n      value: b\n"
        "  inputArtifactBindings:",
    )
    root = gitops({"templates/echo.yaml": ECHO_TEMPLATE, "manifests/echo.yaml": manifests})
    p = only(cli("validate", "--root", root))
    assert p["pointer"] == "/spec/parameterBindings/1/key" and "bound twice" in p["message"]


def test_a_required_parameter_without_value(gitops):
    template = ECHO_TEMPLATE.replace(
        "      - name: greeting\n        default: hello\n", "      - name: greeting\n"
    )
    root = gitops({"templates/echo.yaml": template, "manifests/echo.yaml": ECHO_MANIFESTS})
    p = only(cli("validate", "--root", root))
    assert p["file"] == "manifests/echo.yaml"
    assert "parameter greeting of executable echo-serving has no value" in p["message"]


def test_an_unbound_artifact_input(gitops):
    manifests = ECHO_MANIFESTS.replace(
        "  inputArtifactBindings:\n    - key: model\n      artifactId: echo-model\n", ""
    )
    root = gitops({"templates/echo.yaml": ECHO_TEMPLATE, "manifests/echo.yaml": manifests})
    p = only(cli("validate", "--root", root))
    assert "artifact input model of executable echo-serving is not bound" in p["message"]


def test_artifact_ids_must_exist_in_the_same_resource_group(gitops):
    # The artifact lives in another resource group: invisible to this configuration.
    manifests = ECHO_MANIFESTS.replace(
        "  name: echo-model\n", "  name: echo-model\n  resourceGroup: team-b\n", 1
    )
    root = gitops({"templates/echo.yaml": ECHO_TEMPLATE, "manifests/echo.yaml": manifests})
    p = only(cli("validate", "--root", root))
    assert p["pointer"] == "/spec/inputArtifactBindings/0/artifactId"
    assert "artifact 'echo-model' not found in resource group default" in p["message"]


def test_deployment_names_an_unknown_configuration(gitops):
    root = gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "manifests/echo.yaml": ECHO_MANIFESTS.replace(
                "configurationId: echo-config", "configurationId: echo-conf"
            ),
        }
    )
    p = only(cli("validate", "--root", root))
    assert p["pointer"] == "/spec/configurationId"
    assert "configuration 'echo-conf' not found in resource group default" in p["message"]
    assert "did you mean 'echo-config'" in p["message"]


def test_a_reference_to_a_broken_document_is_not_reported_twice(gitops):
    # The configuration itself is invalid; the deployment's reference to it is not "not found".
    manifests = ECHO_MANIFESTS.replace(
        "  executableId: echo-serving\n", "  executableId: echo-serving\n  extra: 1\n"
    )
    root = gitops({"templates/echo.yaml": ECHO_TEMPLATE, "manifests/echo.yaml": manifests})
    p = only(cli("validate", "--root", root))
    assert p["pointer"] == "/spec/extra"


@pytest.mark.parametrize(
    ("ttl", "message"),
    [
        ("4.5h", "a natural number and m, h or d"),
        ("4h30m", "a natural number and m, h or d"),
        ("5m", "shorter than the minimum of 10m"),
        ("0d", "shorter than the minimum of 10m"),
        # Beyond what a date can hold (and Python's int() refuses 4301 digits): an error in
        # the manifest, not a crash of the planner's clock arithmetic.
        ("9999999d", "at most 6 digits"),
        ("9" * 5000 + "d", "at most 6 digits"),
    ],
)
def test_bad_ttl(gitops, ttl, message):
    root = gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "manifests/echo.yaml": ECHO_MANIFESTS + f"  ttl: '{ttl}'\n",
        }
    )
    p = only(cli("validate", "--root", root))
    assert p["pointer"] == "/spec/ttl" and message in p["message"]


@pytest.mark.parametrize("ttl", ["10m", "5h", "2d", "3H"])
def test_good_ttl(gitops, ttl):
    root = gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "manifests/echo.yaml": ECHO_MANIFESTS + f"  ttl: '{ttl}'\n",
        }
    )
    assert cli("validate", "--root", root).code == 0


def test_two_settings_documents(gitops):
    settings = (
        "apiVersion: reconciler/v1\nkind: Settings\nmetadata: {name: host}\nspec: {instance: abc}\n"
    )
    root = gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "manifests/echo.yaml": ECHO_MANIFESTS,
            "manifests/settings.yaml": settings,
            "manifests/settings2.yaml": settings,
        }
    )
    p = only(cli("validate", "--root", root))
    assert p["file"] == "manifests/settings2.yaml" and "second Settings" in p["message"]


def test_every_problem_is_reported_in_one_run(gitops):
    manifests = (
        ECHO_MANIFESTS.replace("configurationId: echo-config", "configurationId: nope-config")
        .replace("executableId: echo-serving", "executableId: nope-serving")
        .replace("  url: file:models/echo\n", "  url: file:models/echo\n  colour: blue\n")
    )
    root = gitops({"templates/echo.yaml": ECHO_TEMPLATE, "manifests/echo.yaml": manifests})
    found = problems(cli("validate", "--root", root))
    assert {p["pointer"] for p in found} == {
        "/spec/colour",
        "/spec/executableId",
        "/spec/configurationId",
    }
    # ...each with the line of the field in the multi-document file.
    text = (root / "manifests/echo.yaml").read_text().splitlines()
    for p in found:
        key = p["pointer"].rsplit("/", 1)[1]
        assert key in text[int(p["line"]) - 1], p


# -- files that are not manifests -----------------------------------------------------------


def test_broken_yaml_names_file_and_line(gitops):
    root = gitops(
        {"manifests/bad.yaml": "apiVersion: reconciler/v1\nkind: [Deployment\nmetadata: {}\n"}
    )
    p = only(cli("validate", "--root", root))
    assert p["file"] == "manifests/bad.yaml" and p["line"] in ("2", "3")
    assert "invalid YAML" in p["message"]


def test_duplicate_keys_are_errors(gitops):
    root = gitops(
        {
            "templates/echo.yaml": ECHO_TEMPLATE,
            "manifests/echo.yaml": ECHO_MANIFESTS.replace(
                "  configurationId: echo-config\n",
                "  configurationId: echo-config\n  configurationId: other\n",
            ),
        }
    )
    p = only(cli("validate", "--root", root))
    assert "duplicate key 'configurationId'" in p["message"]
    assert p["line"] == str(ECHO_MANIFESTS.lstrip("\n").count("\n") + 1)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no manifest"),
        ("# only a comment\n", "holds no manifest"),
        ("---\n---\n", "holds no manifest"),
        ("- a\n- b\n", "must be a mapping"),
        ("just text\n", "must be a mapping"),
    ],
)
def test_files_without_manifests(gitops, content, message):
    root = gitops({"manifests/x.yaml": "placeholder"})
    (root / "manifests/x.yaml").write_text(content)
    p = only(cli("validate", "--root", root))
    assert p["file"] == "manifests/x.yaml" and message in p["message"]


def test_binary_garbage(gitops):
    root = gitops({"manifests/x.yaml": "placeholder"})
    (root / "manifests/x.yaml").write_bytes(bytes(range(256)) * 4)
    p = only(cli("validate", "--root", root))
    assert "not UTF-8" in p["message"]


def test_nul_bytes_in_utf8(gitops):
    root = gitops({"manifests/x.yaml": "placeholder"})
    (root / "manifests/x.yaml").write_bytes(b"kind: Deployment\x00\n")
    p = only(cli("validate", "--root", root))
    assert "invalid YAML" in p["message"]


def test_unreadable_file(gitops):
    root = gitops({"templates/echo.yaml": ECHO_TEMPLATE})
    os.symlink(root / "does-not-exist.yaml", root / "manifests" / "gone.yaml")
    p = only(cli("validate", "--root", root))
    assert p["file"] == "manifests/gone.yaml" and "cannot read file" in p["message"]


def test_missing_root(tmp_path):
    result = cli("validate", "--root", tmp_path / "nowhere")
    assert result.code == 1
    assert result.lines == [
        f"error: GitOps root {tmp_path / 'nowhere'} does not exist: pass --root DIR or cd into it"
    ]


def test_root_without_manifest_folders(tmp_path):
    result = cli("validate", "--root", tmp_path)
    assert result.code == 1 and "neither manifests/ nor templates/" in result.err


def test_dates_stay_text(gitops):
    template = ECHO_TEMPLATE.replace("        default: hello\n", "        default: 2026-01-01\n")
    root = gitops({"templates/echo.yaml": template, "manifests/echo.yaml": ECHO_MANIFESTS})
    assert cli("validate", "--root", root).code == 0
    assert "echo/server:2026-01-01" in cli("render", "echo", "--root", root).out


def test_broken_copies_of_the_project_fail_cleanly_in_a_real_process(tmp_path):
    """The contract: exit 1, every line names the file, no traceback."""
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(PROJECT / "manifests", root / "manifests")
    shutil.copytree(PROJECT / "templates", root / "templates")
    (root / "manifests" / "garbage.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (root / "manifests" / "broken.yaml").write_text("kind: Deployment\n  bad indent: [\n")
    (root / "manifests" / "empty.yaml").write_text("")
    churn = root / "manifests" / "churn.yaml"
    churn.write_text(
        churn.read_text().replace("configurationId: churn-v1", "configurationId: churn-v9")
    )
    result = cli_process("validate", "--root", root)
    assert result.code == 1
    assert "Traceback" not in result.err
    found = problems(result)
    assert {p["file"] for p in found} == {
        "manifests/garbage.yaml",
        "manifests/broken.yaml",
        "manifests/empty.yaml",
        "manifests/churn.yaml",
    }
    assert result.err.rstrip().endswith("error: 4 problems in the manifests; nothing was changed")
