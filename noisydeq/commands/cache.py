"""``noisydeq cache``: what the on-disk cache holds and which entries no run of this code can
hit again (``list``, the default), and deleting entries (``prune``, ``clear``) without
hurting a run that uses them (:mod:`noisydeq.cachedir`). Reads files only: no torch.
"""

from __future__ import annotations

import json
from typing import Any

import click

from noisydeq.cachedir import KINDS
from noisydeq.commands import cache_option
from noisydeq.errors import NoisyDEQError, did_you_mean
from noisydeq.limits import fmt_bytes


def _kinds(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple:
    for v in values:
        if v not in KINDS:
            raise NoisyDEQError(f"--kind '{v}': unknown kind{did_you_mean(v, KINDS)} (kinds: "
                                f"{', '.join(KINDS)})")
    return tuple(dict.fromkeys(values))


def _days(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not value >= 0:
        raise NoisyDEQError(f"--older-than {value:g}: expected a number of days >= 0")
    if value == float("inf"):  # it would select nothing and say so as a success
        raise NoisyDEQError("--older-than inf: no entry is that old; expected a finite "
                            "number of days")
    return value


def _scanned() -> Any:
    """The inventory of the cache this command reads and prunes (``--cache``, given before
    or after the sub-command — the sub-command's wins —, else the default); the code
    fingerprint's memo (compared with what the entries record) is that cache's too, as it
    is for every command (:func:`noisydeq.runtime.cache_root`)."""
    from noisydeq.cachedir.inventory import scan
    from noisydeq.runtime import cache_root

    return scan(cache_root())


def summary(inv: Any) -> dict[str, Any]:
    """Per kind: entries, bytes, stale / current / unknown counts and the stale bytes."""
    from noisydeq.cachedir.current import device_fields

    kinds = {}
    for kind in KINDS:
        es = inv.of(kind)
        kinds[kind] = {"entries": len(es), "bytes": sum(e.size for e in es),
                       **{s: sum(e.status == s for e in es)
                          for s in ("stale", "current", "unknown")},
                       "stale_bytes": sum(e.size for e in es if e.status == "stale")}
    now = device_fields("chips")
    codes = {"device": now["code"], "figures": device_fields("figures")["code"]}
    return {"cache": str(inv.root), "exists": inv.root.is_dir(), "kinds": kinds,
            "other": {"files": len(inv.other), "bytes": sum(n for _, n in inv.other)},
            "temporary": {"files": len(inv.temps), "bytes": sum(t[2] for t in inv.temps),
                          "stale": sum(t[3] for t in inv.temps)},
            "current": {"version": now["version"], "codes": codes, "torch": now["torch"],
                        "machine": now["machine"]}}


def _table(info: dict[str, Any]) -> str:
    head = ("kind", "entries", "size", "stale", "stale size", "current", "unknown")
    rows = [(k, str(v["entries"]), fmt_bytes(v["bytes"]), str(v["stale"]),
             fmt_bytes(v["stale_bytes"]), str(v["current"]), str(v["unknown"]))
            for k, v in info["kinds"].items()]
    total = [sum(v[f] for v in info["kinds"].values())
             for f in ("entries", "bytes", "stale", "stale_bytes", "current", "unknown")]
    rows.append(("total", str(total[0]), fmt_bytes(total[1]), str(total[2]), fmt_bytes(total[3]),
                 str(total[4]), str(total[5])))
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = [f"cache {info['cache']}" + ("" if info["exists"] else " (does not exist)")]
    for r in (head, *rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    other = info["other"]
    if other["files"]:
        lines.append(f"other: {other['files']} file(s), {fmt_bytes(other['bytes'])} "
                     "(not entries of this noisydeq; never deleted)")
    temps = info["temporary"]
    if temps["files"]:
        lines.append(f"temporary: {temps['files']} file(s), {fmt_bytes(temps['bytes'])} "
                     f"({temps['files'] - temps['stale']} being written, {temps['stale']} "
                     "left by killed writers: removed by prune and clear)")
    cur = info["current"]
    lines.append("stale = recorded for another code, torch or machine: no run of this one "
                 f"can hit them\n(this one: noisydeq {cur['version']}, code "
                 + ", ".join(f"{k} {v}" for k, v in cur["codes"].items())
                 + f", torch {cur['torch']}, {cur['machine']}); unknown = the entry records none")
    return "\n".join(lines)


def _json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(f)


class _Group(click.Group):
    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name = args[0] if args else ""
        if args and not name.startswith("-") and self.get_command(ctx, name) is None:
            ctx.fail(f"no such command 'cache {name}'{did_you_mean(name, self.commands)} "
                     f"(commands: {', '.join(self.commands)})")
        return super().resolve_command(ctx, args)


@click.group("cache", cls=_Group, invoke_without_command=True)
@cache_option
@_json_option
@click.pass_context
def command(ctx: click.Context, as_json: bool) -> None:
    """Show and prune the on-disk cache (models, calibrations, chips, figures, code memo).

    \b
    Examples:
      noisydeq cache                    # = cache list: entries, size, stale per kind
      noisydeq cache --json
      noisydeq cache --cache /tmp/cache

    \b
    Deleting:
      noisydeq cache prune --stale --dry-run
      noisydeq cache prune --older-than 30 --kind chips
      noisydeq cache clear --kind calibration
      noisydeq cache clear --yes          # every entry of every kind

    An entry is stale when the fields it records (format, noisydeq version and code, torch,
    machine; a model's training schema; a figure entry's drawing libraries) differ from this
    process's: no run of this code can hit it again. A code memo is stale unless it is the
    one this code and Python read. Entries in use by another process are skipped and
    reported.
    """
    ctx.ensure_object(dict)
    ctx.obj.update(json=as_json)  # given before the sub-command: theirs too
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_command, as_json=as_json)


@command.command("list")
@cache_option
@_json_option
@click.pass_context
def list_command(ctx: click.Context, as_json: bool) -> None:
    """Entries, size and stale entries per kind, and the cache path."""
    info = summary(_scanned())
    as_json = as_json or (ctx.obj or {}).get("json", False)
    click.echo(json.dumps(info, indent=2) if as_json else _table(info))


def _report(outcome: Any, dry_run: bool, as_json: bool) -> None:
    by_kind = {k: [e for e in outcome.removed if e.kind == k] for k in KINDS}
    if as_json:
        click.echo(json.dumps({
            "dry_run": dry_run, "removed": [e.name for e in outcome.removed],
            "temporary_removed": [f"{p.parent.name}/{p.name}" for p, _ in outcome.temps],
            "freed_bytes": outcome.freed,
            "skipped": [{"entry": e.name, "reason": why} for e, why in outcome.skipped]},
            indent=2))
        return
    parts = ", ".join(f"{k} {len(v)} ({fmt_bytes(sum(e.size for e in v))})"
                      for k, v in by_kind.items() if v)
    verb = "would remove" if dry_run else "removed"
    freed = "would free" if dry_run else "freed"
    n = len(outcome.removed)
    click.echo(f"{verb} {n} entr{'y' if n == 1 else 'ies'}, {freed} {fmt_bytes(outcome.freed)}"
               + (f": {parts}" if parts else ""))
    if outcome.temps:
        t = len(outcome.temps)
        click.echo(f"{verb} {t} temporary file{'s' * (t != 1)} left by killed writers "
                   f"({fmt_bytes(sum(n for _, n in outcome.temps))})")
    for line in _skipped_lines(outcome.skipped):
        click.echo(line)


#: entries named on one "skipped" line for one reason (``--json`` lists every one)
_NAMED = 3


def _skipped_lines(skipped: list[tuple[Any, str]]) -> list[str]:
    """A line per skipped entry, except that the entries no process could delete for one
    reason (a read-only cache: every entry ``cannot be deleted (Read-only file system)``)
    share one line, naming the first few: a lab's shared cache listed each of them."""
    lines, stuck = [], {}
    for entry, why in skipped:
        if why.startswith("cannot be deleted"):
            stuck.setdefault(why, []).append(entry.name)
        else:
            lines.append(f"skipped {entry.name}: {why}")
    for why, names in stuck.items():
        if len(names) == 1:
            lines.append(f"skipped {names[0]}: {why}")
            continue
        shown = ", ".join(names[:_NAMED]) + (", … (--json lists them)"
                                            if len(names) > _NAMED else "")
        lines.append(f"skipped {len(names)} entries: {why}: {shown}")
    return lines


def _prune(ctx: click.Context, kinds: tuple, stale: bool,
           older_than: float | None, dry_run: bool, as_json: bool) -> None:
    from noisydeq.cachedir.prune import remove, select

    as_json = as_json or (ctx.obj or {}).get("json", False)
    inv = _scanned()
    due = select(inv, kinds, stale, older_than)
    outcome = remove(due, dry_run, inv, kinds)
    _report(outcome, dry_run, as_json)
    stuck = [why for _, why in outcome.skipped if why.startswith("cannot be deleted")]
    if stuck and not dry_run:
        # entries were due and this process could not delete them (a read-only cache): the
        # command did not do what was asked, so it fails (exit 2), after the report; entries
        # another process was using are not a failure (the next prune takes them)
        why = stuck[0] if len(set(stuck)) == 1 else "cannot be deleted"
        cmd = "prune" if stale or older_than is not None else "clear"
        raise NoisyDEQError(f"cache {cmd}: {len(stuck)} of {len(due)} entries due for removal "
                            f"were skipped: {why}; the cache is not writable by this process")


_KIND = click.option("--kind", "kinds", multiple=True, callback=_kinds, metavar="K",
                     help=f"Only entries of this kind ({', '.join(KINDS)}); repeatable.")
_DRY = click.option("--dry-run", is_flag=True, help="Delete nothing; say what would go.")


@command.command("prune")
@click.option("--stale", is_flag=True, help="Entries no run of this code can hit again.")
@click.option("--older-than", "older_than", type=float, default=None, callback=_days,
              metavar="DAYS", help="Entries last written more than DAYS days ago.")
@_KIND
@_DRY
@cache_option
@_json_option
@click.pass_context
def prune_command(ctx: click.Context, stale: bool, older_than: float | None, kinds: tuple,
                  dry_run: bool, as_json: bool) -> None:
    """Delete the stale (--stale) and/or old (--older-than DAYS) entries (of --kind)."""
    if not stale and older_than is None:
        raise NoisyDEQError("cache prune: give --stale and/or --older-than DAYS (every "
                            "entry of a kind: noisydeq cache clear --kind K)")
    _prune(ctx, kinds, stale, older_than, dry_run, as_json)


@command.command("clear")
@_KIND
@click.option("--yes", is_flag=True, help="Confirm deleting every entry of every kind.")
@_DRY
@cache_option
@_json_option
@click.pass_context
def clear_command(ctx: click.Context, kinds: tuple, yes: bool, dry_run: bool,
                  as_json: bool) -> None:
    """Delete every entry of --kind K (repeatable), or of every kind with --yes."""
    if not kinds and not yes and not dry_run:
        raise NoisyDEQError(f"cache clear: name the --kind to delete ({', '.join(KINDS)}), "
                            "or pass --yes to delete every entry")
    _prune(ctx, kinds, False, None, dry_run, as_json)
