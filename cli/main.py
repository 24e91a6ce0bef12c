"""``evsim`` command line.

Commands stay thin: they parse options, call the Python API, and print.  Heavy modules
(numpy, numba, the engine) are imported inside the commands so that ``evsim --help``
and ``evsim --version`` are instant.  Every deliberate evsim error is turned into one
clean line and exit code 1 in exactly one place, :meth:`EvsimGroup.invoke`.
"""
from __future__ import annotations

import json
import sys

import click

from evsim.errors import EvsimError


class EvsimGroup(click.Group):
    """Click group that reports :class:`EvsimError` (and file-system errors) as one line."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EvsimError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}") from None


@click.group(cls=EvsimGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="evsim", prog_name="evsim")
def main():
    """evsim: event-driven simulation of SNNs converted from trained ANNs.

    Models use the evsim format v1 (.npz or .h5); see docs/format.md.
    """


def format_table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """Plain-text table; ``align`` has one 'l' or 'r' per column (default: first left)."""
    align = align or "l" + "r" * (len(headers) - 1)
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect(model, as_json):
    """Show the nodes of MODEL: op, output shape, parameters, MACs, and totals."""
    import evsim
    from evsim.summary import summary_json

    info = summary_json(evsim.load(model))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    rows = [[n["name"], n["op"], "x".join(map(str, n["shape"])), f"{n['params']:,}", f"{n['macs']:,}"]
            for n in info["nodes"]]
    click.echo(f"{model}: kind {info['kind']}, input {'x'.join(map(str, info['input']))}, output '{info['output']}'")
    click.echo(format_table(["node", "op", "output", "params", "MACs"], rows, "llrrr"))
    t = info["totals"]
    click.echo(f"total: {t['params']:,} parameters, {t['macs']:,} MACs (conv/linear), {t['neurons']:,} neurons")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
