"""The command line: a thin face over the pipeline's core functions.

Exit codes: 0 ok, 1 error (user errors, invalid manifests, usage), and for `plan
--detailed-exitcode` 2 = changes pending (Terraform's convention). A user error is printed as
one line naming the thing and what to do, never as a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .errors import ManifestError, UserError

F = TypeVar("F", bound=Callable[..., Any])


def _root_option(f: F) -> F:
    return click.option(
        "--root",
        "root",
        type=click.Path(path_type=Path, file_okay=True, dir_okay=True),
        default=None,
        help="The GitOps repository (default: the current directory).",
    )(f)


def _root(ctx: click.Context, root: Path | None) -> Path:
    return root or ctx.obj.get("root") or Path.cwd()


def _json_out(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@_root_option
@click.version_option(package_name="reconciler")
@click.pass_context
def cli(ctx: click.Context, root: Path | None) -> None:
    """GitOps reconciler for AI Core-style model deployments on Docker hosts."""
    ctx.ensure_object(dict)
    ctx.obj["root"] = root


@cli.command()
@_root_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def validate(ctx: click.Context, root: Path | None, as_json: bool) -> None:
    """Load, schema-check, cross-check and render every manifest."""
    from .desired import desired_state

    try:
        state = desired_state(_root(ctx, root))
    except ManifestError as exc:
        if as_json:
            _json_out(
                {
                    "valid": False,
                    "problems": [
                        {"file": p.file, "line": p.line, "pointer": p.pointer, "message": p.message}
                        for p in exc.problems
                    ],
                }
            )
            ctx.exit(1)
        raise
    repo = state.repo
    counts = {
        "deployments": len(state.deployments),
        "configurations": len(repo.configurations),
        "executables": len(repo.templates),
        "artifacts": len(repo.artifacts),
    }
    if as_json:
        _json_out({"valid": True, "instance": repo.instance, **counts})
    else:
        summary = ", ".join(f"{n} {what}" for what, n in counts.items())
        click.echo(f"valid: {summary} (instance {repo.instance})")


@cli.command()
@click.argument("name_or_id")
@_root_option
@click.option("--resource-group", "-g", default=None, help="Resource group of a named deployment.")
@click.option("--json", "as_json", is_flag=True, help="Print the spec as JSON.")
@click.pass_context
def render(
    ctx: click.Context,
    name_or_id: str,
    root: Path | None,
    resource_group: str | None,
    as_json: bool,
) -> None:
    """Print the resolved container spec of one deployment."""
    from .desired import desired_state

    state = desired_state(_root(ctx, root))
    d = state.find(name_or_id, resource_group)
    data = {
        "id": d.id,
        "name": d.name,
        "resourceGroup": d.deployment.resource_group,
        "configurationId": d.configuration.id,
        "executableId": d.template.name,
        "scenarioId": d.template.scenario_id,
        "targetStatus": d.deployment.target_status,
        "spec": d.spec.to_dict(),
    }
    if as_json:
        _json_out(data)
    else:
        import yaml

        click.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), nl=False)


@cli.command("schema")
@click.argument("kind", required=False)
def schema_command(kind: str | None) -> None:
    """Print the JSON Schema of KIND (or of any manifest) for editors."""
    from . import schema

    if kind is None:
        _json_out(schema.combined_schema())
        return
    match = next((k for k in schema.KINDS if k.lower() == kind.lower()), None)
    if match is None:
        raise UserError(f"unknown kind {kind!r}; known kinds: {', '.join(schema.KINDS)}")
    _json_out(schema.kind_schema(match))


def main(argv: list[str] | None = None) -> int:
    try:
        result = cli.main(args=argv, prog_name="reconciler", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return 1
    except click.Abort:
        click.echo("aborted", err=True)
        return 1
    except ManifestError as exc:
        for line in exc.lines():
            click.echo(line, err=True)
        click.echo(f"error: {exc.summary()}; nothing was changed", err=True)
        return 1
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
