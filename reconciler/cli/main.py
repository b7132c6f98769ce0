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

from ..errors import ManifestError, UserError

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
    from ..manifests.desired import desired_state

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
    from ..manifests.desired import desired_state

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
        "model": d.model.label if d.model else None,  # the catalog version, latest resolved
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
    from ..manifests import schema

    if kind is None:
        _json_out(schema.combined_schema())
        return
    match = next((k for k in schema.KINDS if k.lower() == kind.lower()), None)
    if match is None:
        raise UserError(f"unknown kind {kind!r}; known kinds: {', '.join(schema.KINDS)}")
    _json_out(schema.kind_schema(match))


def _tty(stream: object) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


def _revision_option(f: F) -> F:
    return click.option(
        "--revision",
        metavar="REV",
        default=None,
        help="Use the manifests committed at REV (commit, tag, branch, HEAD~1 ...), not the "
        "working tree: rollback = reconcile an older commit.",
    )(f)


@cli.command("plan")
@_root_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print the plan as JSON (with a format version)."
)
@click.option(
    "--format",
    "output",
    type=click.Choice(["text", "json", "markdown"]),
    default="text",
    help="text (default); json (as --json); markdown: a comment for a merge request, errors "
    "included (exit 1 then, as with --json).",
)
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 0 when there is nothing to change, 2 when there are changes, 1 on error.",
)
@click.option("--allow-empty", is_flag=True, help="Allow deleting every deployment.")
@_revision_option
@click.pass_context
def plan_command(
    ctx: click.Context,
    root: Path | None,
    as_json: bool,
    output: str,
    detailed_exitcode: bool,
    allow_empty: bool,
    revision: str | None,
) -> None:
    """Show what reconcile would change on Docker, each change with its cause."""
    from ..core.reconcile import preview
    from .present import plan_text

    if output == "markdown":
        from .plan_markdown import plan_markdown, unplannable

        try:
            the_plan = preview(_root(ctx, root), allow_empty=allow_empty, revision=revision).plan
        except ManifestError as exc:  # (the comment says what is wrong, rather than nothing)
            the_plan = unplannable(exc.problems, revision)
        click.echo(plan_markdown(the_plan))
        if the_plan.problems:
            ctx.exit(1)
        if detailed_exitcode and the_plan.has_changes:
            ctx.exit(2)
        return
    the_plan = preview(_root(ctx, root), allow_empty=allow_empty, revision=revision).plan
    if as_json or output == "json":
        _json_out(the_plan.to_json())
        if the_plan.problems:
            ctx.exit(1)
    elif the_plan.problems:
        raise ManifestError(the_plan.problems)
    else:
        for line in plan_text(the_plan, colour=_tty(sys.stdout)):
            click.echo(line)
    if detailed_exitcode and the_plan.has_changes:
        ctx.exit(2)


def _run_pass(
    ctx: click.Context,
    root: Path,
    allow_empty: bool,
    parallel: int | None,
    lock_timeout: float,
    confirm: Callable[[Any], bool] | None,
    revision: str | None = None,
) -> None:
    """Print the plan, (ask,) apply with progress, and say whether the host converged."""
    from ..core.reconcile import reconcile
    from .present import Progress, plan_text

    progress = Progress(live=_tty(sys.stderr))

    def accept(the_plan: Any) -> bool:
        for line in plan_text(the_plan, colour=_tty(sys.stdout)):
            click.echo(line)
        if confirm is not None and not confirm(the_plan):
            return False
        progress.start(len(the_plan.changes) + len(the_plan.settle))
        return True

    try:
        result = reconcile(
            root,
            allow_empty=allow_empty,
            parallel=parallel,  # None: apply's default
            report=progress,
            note=progress.note,
            confirm=accept,
            lock_wait=lock_timeout,
            revision=revision,
        )
    finally:
        progress.close()
    if not result.applied:
        click.echo("nothing applied")
        return
    if not result.outcomes:
        click.echo("converged: nothing to change")
        return
    failed = [o for o in result.outcomes if not o.ok]
    if failed:
        click.echo(
            f"not converged: {len(failed)} of {len(result.outcomes)} deployment(s) failed "
            f"({result.seconds:.1f}s); see reconciler status",
            err=True,
        )
        ctx.exit(1)
    click.echo(f"converged: {len(result.outcomes)} deployment(s) changed in {result.seconds:.1f}s")


def _pass_options(f: F) -> F:
    f = click.option(
        "--parallel",
        type=click.IntRange(1, 64),
        default=None,
        help="Deployments worked on at the same time (default 16; on Swarm 64).",
    )(f)
    f = click.option(
        "--lock-timeout",
        type=click.FloatRange(0),
        default=10.0,
        show_default=True,
        help="Seconds to wait for another reconcile of this root to finish.",
    )(f)
    return click.option("--allow-empty", is_flag=True, help="Allow deleting every deployment.")(f)


@cli.command("reconcile")
@_root_option
@_pass_options
@_revision_option
@click.pass_context
def reconcile_command(
    ctx: click.Context,
    root: Path | None,
    allow_empty: bool,
    parallel: int | None,
    lock_timeout: float,
    revision: str | None,
) -> None:
    """One full converge pass, without a prompt (what CI, cron and watch run)."""
    _run_pass(
        ctx, _root(ctx, root), allow_empty, parallel, lock_timeout, confirm=None, revision=revision
    )


@cli.command("apply")
@_root_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask; apply the plan.")
@_pass_options
@click.pass_context
def apply_command(
    ctx: click.Context,
    root: Path | None,
    yes: bool,
    allow_empty: bool,
    parallel: int | None,
    lock_timeout: float,
) -> None:
    """Print the plan, ask, then reconcile."""
    if not yes and not _tty(sys.stdin):
        raise UserError(
            "apply needs a terminal to ask for confirmation: pass --yes, or use reconcile"
        )

    def confirm(the_plan: Any) -> bool:
        if yes or not (the_plan.changes or the_plan.settle):
            return True
        return click.confirm("Apply these changes?", default=False)

    _run_pass(ctx, _root(ctx, root), allow_empty, parallel, lock_timeout, confirm=confirm)


@cli.command("status")
@_root_option
@click.option("--json", "as_json", is_flag=True, help='Print {"deployments": [...]} as JSON.')
@click.pass_context
def status_command(ctx: click.Context, root: Path | None, as_json: bool) -> None:
    """Every deployment with AI Core's field names (snapshot merged with the live state)."""
    from ..core.status import status_view
    from .present import engine_lines, status_table

    items, notes, engine = status_view(_root(ctx, root))
    for note in notes:
        click.echo(f"warning: {note}", err=True)
    if as_json:
        _json_out({"deployments": items, "warnings": notes, "engine": engine})
    else:
        click.echo(status_table(items))
        if engine.get("nodes"):
            click.echo(engine_lines(engine))


def _since(text: str | None) -> Any:
    if text is None:
        return None
    import re
    from datetime import UTC, datetime, timedelta

    match = re.fullmatch(r"(\d+)([smhd])", text)
    if match:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(
            f"--since {text!r}: use a duration (30s, 10m, 2h, 1d) or an ISO time"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@cli.command("logs")
@click.argument("name_or_id")
@_root_option
@click.option("--resource-group", "-g", default=None, help="Resource group of a named deployment.")
@click.option(
    "--since", default=None, help="Only lines newer than this: 10m, 2h, 1d or an ISO time."
)
@click.option("--tail", type=click.IntRange(min=0), default=None, help="Only the last N lines.")
@click.option("--timestamps", "-t", is_flag=True, help="Prefix every line with its time.")
@click.pass_context
def logs_command(
    ctx: click.Context,
    name_or_id: str,
    root: Path | None,
    resource_group: str | None,
    since: str | None,
    tail: int | None,
    timestamps: bool,
) -> None:
    """The model server's log lines."""
    from ..core.logs import deployment_logs

    for line in deployment_logs(
        _root(ctx, root), name_or_id, resource_group, _since(since), tail, timestamps
    ):
        click.echo(line)


@cli.command("serve")
@_root_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option(
    "--api-url",
    default=None,
    help="Public base URL of this server, for deploymentUrls (default: Settings.apiUrl, "
    "else http://HOST:PORT as served).",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    callback=lambda _ctx, _param, values: _networks(values),
    help="Address or CIDR of a reverse proxy whose Host, X-Forwarded-For and "
    "X-Forwarded-Proto are believed (repeatable; default: none, nobody's).",
)
@click.option(
    "--credentials",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Clients file (default: ~/.config/reconciler/<instance>/clients.json).",
)
@click.option(
    "--no-auth",
    is_flag=True,
    help="Accept every request without a token (local development only).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=300.0,
    show_default=True,
    help="Seconds a model server may take to answer one request.",
)
@click.option(  # (defaults: relay.HEAD_SECONDS, relay.MAX_PER_ADDRESS; not imported here)
    "--head-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    envvar="RECONCILER_HEAD_TIMEOUT",
    show_envvar=True,
    help="Seconds a client may take to send a request head, from its first byte (else 408).",
)
@click.option(
    "--max-connections-per-address",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    envvar="RECONCILER_MAX_CONNECTIONS_PER_ADDRESS",
    show_envvar=True,
    help="Open connections one client address may have; beyond, 503 and closed at once.",
)
@click.option(  # (defaults: gateway.MAX_HELD, gateway.HOLD_SECONDS)
    "--max-held",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    envvar="RECONCILER_MAX_HELD",
    show_envvar=True,
    help="Requests held per deployment while it starts from zero; beyond, 503 Retry-After.",
)
@click.option(
    "--hold-timeout",
    type=click.FloatRange(min=0.1),
    default=120.0,
    show_default=True,
    envvar="RECONCILER_HOLD_TIMEOUT",
    show_envvar=True,
    help="Seconds a request is held while its deployment starts from zero (then 503).",
)
@click.option(
    "--no-autoscale",
    is_flag=True,
    help="Keep replica counts as reconcile leaves them (no autoscaler, no scale to zero).",
)
@click.pass_context
def serve_command(
    ctx: click.Context,
    root: Path | None,
    host: str,
    port: int,
    api_url: str | None,
    trusted_proxies: tuple[Any, ...],
    credentials: Path | None,
    no_auth: bool,
    timeout: float,
    head_timeout: float,
    max_connections_per_address: int,
    max_held: int,
    hold_timeout: float,
    no_autoscale: bool,
) -> None:
    """Deployment URLs (the inference gateway) and the AI API, with OAuth2."""
    from ..serve.server import ServeOptions, serve

    serve(
        ServeOptions(
            _root(ctx, root),
            host=host,
            port=port,
            auth=not no_auth,
            credentials=credentials,
            api_url=api_url.rstrip("/") if api_url else None,
            trusted_proxies=trusted_proxies,
            timeout=timeout,
            head_timeout=head_timeout,
            max_connections_per_address=max_connections_per_address,
            max_held=max_held,
            hold_seconds=hold_timeout,
            autoscale=not no_autoscale,
        )
    )


def _networks(values: tuple[str, ...]) -> tuple[Any, ...]:
    import ipaddress

    try:
        return tuple(ipaddress.ip_network(v, strict=False) for v in values)
    except ValueError as exc:
        raise click.BadParameter(f"{exc} (give an address or a CIDR, e.g. 10.0.0.0/8)") from None


@cli.group("clients")
def clients_group() -> None:
    """OAuth2 clients of `reconciler serve` and the resource groups they may use."""


def _credentials(ctx: click.Context, root: Path | None, path: Path | None) -> Any:
    from ..api.auth import Credentials, default_credentials_path
    from ..manifests.load import load

    if path is None:
        path = default_credentials_path(load(_root(ctx, root))[0].instance)
    return Credentials(path)


def _credentials_option(f: F) -> F:
    return click.option(
        "--credentials",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="Clients file (default: ~/.config/reconciler/<instance>/clients.json).",
    )(f)


@clients_group.command("add")
@click.argument("name")
@click.option(
    "--resource-group",
    "-g",
    "groups",
    multiple=True,
    required=True,
    help="A resource group the client may use (repeatable; '*' for all).",
)
@click.option(
    "--read-only",
    is_flag=True,
    help="The client may read (the AI API's GETs, the dashboard) but change nothing.",
)
@_root_option
@_credentials_option
@click.option("--json", "as_json", is_flag=True, help="Print the new client as JSON.")
@click.pass_context
def clients_add(
    ctx: click.Context,
    name: str,
    groups: tuple[str, ...],
    read_only: bool,
    root: Path | None,
    credentials: Path | None,
    as_json: bool,
) -> None:
    """Create a client; its secret is printed once and stored only as a hash."""
    store = _credentials(ctx, root, credentials)
    client, secret = store.add(name, list(groups), read_only=read_only)
    if as_json:
        _json_out({**client.public(), "clientSecret": secret, "credentials": str(store.path)})
        return
    click.echo(f"client_id:     {client.client_id}")
    click.echo(f"client_secret: {secret}")
    click.echo(f"resource groups: {', '.join(client.resource_groups)}")
    if client.read_only:
        click.echo("read-only: it may look, not change anything")
    click.echo(f"(stored in {store.path}; the secret is not shown again)")


@clients_group.command("list")
@_root_option
@_credentials_option
@click.option("--json", "as_json", is_flag=True, help="Print the clients as JSON.")
@click.pass_context
def clients_list(
    ctx: click.Context, root: Path | None, credentials: Path | None, as_json: bool
) -> None:
    """The clients and their resource groups (never their secrets)."""
    store = _credentials(ctx, root, credentials)
    items = [c.public() for c in sorted(store.clients.values(), key=lambda c: c.name)]
    if as_json:
        _json_out({"clients": items, "credentials": str(store.path)})
        return
    if not items:
        click.echo(f"no clients in {store.path}")
    for c in items:
        groups = ", ".join(c["resourceGroups"])
        click.echo(f"{c['name']:<20} {c['clientId']:<30} {groups}  (since {c['createdAt']})")


@clients_group.command("remove")
@click.argument("name_or_id")
@_root_option
@_credentials_option
@click.pass_context
def clients_remove(
    ctx: click.Context, name_or_id: str, root: Path | None, credentials: Path | None
) -> None:
    """Remove a client: its tokens stop working at once."""
    removed = _credentials(ctx, root, credentials).remove(name_or_id)
    click.echo(f"removed client {removed.name} ({removed.client_id})")


@clients_group.command("rotate-key")
@_root_option
@_credentials_option
@click.pass_context
def clients_rotate_key(ctx: click.Context, root: Path | None, credentials: Path | None) -> None:
    """A new token signing key: every token issued so far stops working."""
    _credentials(ctx, root, credentials).rotate_key()
    click.echo("signing key rotated: clients must request new tokens")


@cli.command("watch")
@_root_option
@click.option(
    "--resync",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds between full passes when nothing else triggers one.",
)
@click.option(
    "--debounce-ms",
    type=click.IntRange(10, 60_000),
    default=500,
    show_default=True,
    help="Quiet time that ends a burst of file changes (one pass per burst).",
)
@click.option(
    "--git",
    "use_git",
    is_flag=True,
    help="Apply what is committed on the branch, not the working tree.",
)
@click.option("--branch", default=None, help="With --git: the branch (default: the current one).")
@click.option(
    "--remote", default=None, help="With --git: follow REMOTE/BRANCH, fetched on an interval."
)
@click.option(
    "--fetch-interval",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="With --remote: seconds between git fetches.",
)
@click.option(
    "--parallel",
    type=click.IntRange(1, 64),
    default=None,
    help="Deployments worked on at the same time (default 16).",
)
@click.option("--allow-empty", is_flag=True, help="Allow deleting every deployment.")
@click.option(
    "--no-self-heal",
    is_flag=True,
    help="Report containers stopped, removed or added by hand as out of sync instead of "
    "restoring them (as Settings spec.selfHeal: false); `reconciler reconcile` restores them.",
)
@click.pass_context
def watch_command(
    ctx: click.Context,
    root: Path | None,
    resync: float,
    debounce_ms: int,
    use_git: bool,
    branch: str | None,
    remote: str | None,
    fetch_interval: float,
    parallel: int | None,
    allow_empty: bool,
    no_self_heal: bool,
) -> None:
    """Reconcile continuously: on manifest changes (or commits), Docker events, deadlines and
    every --resync seconds; undoes drift (unless --no-self-heal). Logs one JSON line per pass
    to stderr."""
    from ..core.watch import WatchOptions, watch

    if (branch or remote) and not use_git:
        raise UserError("--branch and --remote follow committed manifests: add --git")
    options = WatchOptions(
        root=_root(ctx, root),
        resync=resync,
        debounce_ms=debounce_ms,
        git=use_git,
        branch=branch,
        remote=remote,
        fetch_interval=fetch_interval,
        parallel=parallel,
        allow_empty=allow_empty,
        self_heal=False if no_self_heal else None,
    )
    ctx.exit(watch(options))


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


@cli.group("secrets")
def secrets_group() -> None:
    """Secrets kept outside git (object-store credentials)."""


@secrets_group.group("objectstore")
def objectstore_group() -> None:
    """Object-store secrets: where models are (ai://<secret>/<path>) and how to read them."""


def _objectstores(ctx: click.Context, root: Path | None, path: Path | None) -> Any:
    from ..manifests.load import load
    from ..stores.secrets import ObjectStoreSecrets, default_path

    if path is None:
        path = default_path(load(_root(ctx, root))[0].instance)
    return ObjectStoreSecrets(path)


def _objectstores_option(f: F) -> F:
    return click.option(
        "--secrets-file",
        "secrets_file",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="Secrets file (default: ~/.config/reconciler/<instance>/objectstores.json).",
    )(f)


def _group_option(f: F) -> F:
    return click.option(
        "--resource-group", "-g", default="default", show_default=True, help="Resource group."
    )(f)


@objectstore_group.command("add")
@click.argument("name")
@click.option("--bucket", required=True, help="The S3 bucket.")
@click.option("--endpoint", default=None, help="An S3-compatible server's URL (default: AWS).")
@click.option("--region", default=None, help="The bucket's region.")
@click.option("--path-prefix", default="", help="Prefix of every path under this secret.")
@click.option("--no-verify-ssl", is_flag=True, help="Do not check the endpoint's certificate.")
@click.option("--replace", is_flag=True, help="Replace a secret of that name.")
@_group_option
@_root_option
@_objectstores_option
@click.pass_context
def objectstore_add(
    ctx: click.Context,
    name: str,
    bucket: str,
    endpoint: str | None,
    region: str | None,
    path_prefix: str,
    no_verify_ssl: bool,
    replace: bool,
    resource_group: str,
    root: Path | None,
    secrets_file: Path | None,
) -> None:
    """Add an object-store secret. The credentials come from AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY, else they are asked for (never as arguments: other users see
    those); they are stored with mode 0600 and never shown again."""
    import os

    from ..stores.secrets import ObjectStoreSecret

    key_id = os.environ.get("AWS_ACCESS_KEY_ID") or click.prompt("AWS_ACCESS_KEY_ID")
    secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY") or click.prompt(
        "AWS_SECRET_ACCESS_KEY", hide_input=True
    )
    store = _objectstores(ctx, root, secrets_file)
    secret = ObjectStoreSecret(
        name=name,
        resource_group=resource_group,
        bucket=bucket,
        access_key_id=key_id,
        secret_access_key=secret_key,
        endpoint=endpoint.rstrip("/") if endpoint else None,
        region=region,
        path_prefix=path_prefix.strip("/"),
        verify_ssl=not no_verify_ssl,
    )
    store.put(secret, replace=replace)
    click.echo(
        f"object-store secret {name} ({resource_group}): s3://{bucket}/{secret.path_prefix} "
        f"at {secret.endpoint or 'AWS S3'}; models: ai://{name}/<path> (stored in {store.path})"
    )


@objectstore_group.command("list")
@click.option("--resource-group", "-g", default=None, help="Only this resource group.")
@_root_option
@_objectstores_option
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON.")
@click.pass_context
def objectstore_list(
    ctx: click.Context,
    resource_group: str | None,
    root: Path | None,
    secrets_file: Path | None,
    as_json: bool,
) -> None:
    """The object-store secrets (never their credentials)."""
    store = _objectstores(ctx, root, secrets_file)
    items = [s.public() for s in store.list(resource_group)]
    if as_json:
        _json_out({"objectStoreSecrets": items, "file": str(store.path)})
        return
    if not items:
        click.echo(f"no object-store secrets in {store.path}")
    for s in items:
        where = f"s3://{s['bucket']}/{s['pathPrefix']}"
        click.echo(f"{s['name']:<24} {s['resourceGroup']:<12} {where} at {s['endpoint'] or 'AWS'}")


@objectstore_group.command("remove")
@click.argument("name")
@_group_option
@_root_option
@_objectstores_option
@click.pass_context
def objectstore_remove(
    ctx: click.Context,
    name: str,
    resource_group: str,
    root: Path | None,
    secrets_file: Path | None,
) -> None:
    """Remove an object-store secret."""
    if not _objectstores(ctx, root, secrets_file).remove(resource_group, name):
        raise UserError(f"no object-store secret {name} in resource group {resource_group}")
    click.echo(f"removed object-store secret {name} ({resource_group})")
