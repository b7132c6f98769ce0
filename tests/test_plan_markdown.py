"""`reconciler plan --format markdown` (issue 19): a plan as a merge-request comment, checked
against its expected text, parsed back with a real Markdown parser (markdown-it, as GitHub's
and GitLab's are CommonMark with tables) to show that no name or message can break the table or
bring HTML, links or mentions into it; and the CI examples that post it are valid YAML that
run `validate` and `plan`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from markdown_it import MarkdownIt

from reconciler.backends.fake import FakeBackend
from reconciler.cli.plan_markdown import MARKER, cell, plan_markdown
from reconciler.core.reconcile import preview, reconcile
from tests.conftest import PROJECT, cli, write_tree
from tests.test_backend_fake_apply import IMAGE, SETTINGS, TEMPLATE, configuration, deployment


@pytest.fixture(autouse=True)
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/reconciler-tests/docker.sock")


def root_with(tmp_path: Path, *docs: str) -> Path:
    return write_tree(
        tmp_path / "repo",
        {
            "templates/tiny.yaml": TEMPLATE,
            "manifests/settings.yaml": SETTINGS,
            "manifests/app.yaml": "---".join(docs),
        },
    )


def test_a_plan_reads_as_the_comment_a_reviewer_expects(tmp_path: Path):
    fake = FakeBackend(images={IMAGE: "sha256:" + "2" * 64})
    root = root_with(
        tmp_path,
        configuration("tiny-v1"),
        configuration("tiny-v2", version="2"),
        deployment("keep", "tiny-v1"),
        deployment("move", "tiny-v1"),
        deployment("gone", "tiny-v1"),
    )
    assert reconcile(root, backend=fake, trigger="test").converged
    (root / "manifests/app.yaml").write_text(
        "---".join(
            (
                configuration("tiny-v1"),
                configuration("tiny-v2", version="2"),
                deployment("keep", "tiny-v1"),
                deployment("move", "tiny-v2"),
                deployment("fresh", "tiny-v1"),
            )
        )
    )
    the_plan = preview(root, backend=fake).plan
    text = plan_markdown(the_plan)
    assert text == "\n".join(
        [
            MARKER,
            "### reconciler plan: 1 to create, 1 to replace, 1 to delete",
            "",
            "Manifests at the working tree.",
            "",
            "| | Deployment | Resource group | Action | Cause |",
            "|---|---|---|---|---|",
            "| 🟢 | fresh | default | create | new deployment |",
            "| 🟠 | move | default | replace | config changed: env.VERSION (configuration "
            "tiny-v1 → tiny-v2) |",
            "| 🔴 | gone | default | delete | removed from manifests |",
            "",
        ]
    ), text
    rows = table_rows(text)
    assert [r[1] for r in rows] == ["fresh", "move", "gone"]

    (root / "manifests/app.yaml").write_text(
        "---".join((configuration("tiny-v1"), deployment("keep", "tiny-v1")))
    )
    assert reconcile(root, backend=fake, trigger="test", allow_empty=True).converged
    quiet = plan_markdown(preview(root, backend=fake).plan)
    assert "### reconciler plan: no changes" in quiet
    assert "No changes: the hosts match the manifests." in quiet


HOSTILE = [
    "a | b",
    "<script>alert(1)</script>",
    "@everyone look",
    "[click](https://evil.example/x)",
    "https://evil.example/x",
    "![img](https://evil.example/i.png)",
    "**bold** _it_ `code`",
    "line one\nline two",
    "back\\slash | and \\| escaped",
    "#1 <!-- comment -->",
    "see www.evil.example and mailto:x@y.z",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_a_cell_is_plain_text_whatever_it_holds(text: str):
    """Names and causes may carry what a tenant wrote (a URL, a message): in the comment they
    are words in their own cell, never markup, HTML, a link or a mention."""
    table = f"| a | b |\n|---|---|\n| {cell(text)} | end |\n"
    tokens = MarkdownIt("commonmark").enable("table").parse(table)
    kinds = {t.type for t in tokens} | {c.type for t in tokens for c in t.children or ()}
    assert not kinds & {"html_inline", "html_block", "link_open", "image", "strong_open",
                        "em_open", "code_inline"}, kinds  # fmt: skip
    ((first, second),) = table_rows(table)
    assert first == " ".join(text.split()) and second == "end"


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the first table, each cell's plain text, as a renderer shows them."""
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    rows: list[list[str]] = []
    in_body = False
    for t in tokens:
        if t.type == "tbody_open":
            in_body = True
        elif t.type == "tbody_close":
            break
        elif in_body and t.type == "tr_open":
            rows.append([])
        elif in_body and t.type == "inline":
            rows[-1].append("".join(c.content for c in t.children or () if c.type == "text"))
    return rows


def test_invalid_manifests_are_a_comment_with_the_errors_and_exit_1(tmp_path: Path):
    root = root_with(tmp_path, deployment("orphan", "no-such-configuration"))
    result = cli("plan", "--root", root, "--format", "markdown")
    assert result.code == 1, result.err
    assert result.out.startswith(MARKER), result.out
    assert "error(s): nothing can be applied until they are fixed" in result.out
    rows = table_rows(result.out)
    assert rows and rows[0][0] == "manifests/app.yaml", rows
    assert any("no-such-configuration" in " ".join(r) for r in rows), rows


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((PROJECT / "examples/ci" / name).read_text())


def test_the_github_actions_example_validates_then_plans_and_comments():
    flow = _load("github-actions.yml")
    assert flow[True]["pull_request"]["paths"]  # (YAML 1.1 reads the key `on` as True)
    validate, plan = flow["jobs"]["validate"], flow["jobs"]["plan"]
    assert any("reconciler validate" in s.get("run", "") for s in validate["steps"])
    assert plan["needs"] == "validate" and "self-hosted" in plan["runs-on"]
    assert "head.repo.full_name == github.repository" in plan["if"]  # no forks on the host
    runs = "\n".join(s.get("run", "") for s in plan["steps"])
    assert "reconciler plan" in runs and "--format markdown" in runs and "--revision" in runs
    assert "gh pr comment" in runs
    assert flow["permissions"] == {"contents": "read", "pull-requests": "write"}


def test_the_gitlab_example_validates_then_plans_and_posts_a_note():
    ci = _load("gitlab-ci.yml")
    validate, plan = ci["reconciler-validate"], ci["reconciler-plan"]
    assert "reconciler validate --root ." in validate["script"]
    assert plan["needs"] == ["reconciler-validate"] and plan["tags"] == ["reconciler-host"]
    script = "\n".join(plan["script"])
    assert "reconciler plan" in script and "--format markdown" in script
    assert "/merge_requests/$CI_MERGE_REQUEST_IID/notes" in script
    assert "CI_MERGE_REQUEST_SOURCE_PROJECT_ID == $CI_PROJECT_ID" in plan["rules"][0]["if"]
