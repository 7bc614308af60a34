"""Command-line helpers shared by ``mixjax.fit`` and ``mixjax.mix``."""

from __future__ import annotations

from collections.abc import Sequence


def per_domain_values(items: Sequence[str], domains: Sequence[str], flag: str, *, required: bool = False) -> dict[str, float]:
    """``name=number`` pairs of the flag ``flag`` as {domain: value}.

    Raises:
      ValueError: naming ``flag``: an unknown domain, a value that is not a number, or (with
        ``required``) a domain left out.
    """
    out: dict[str, float] = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in domains:
            raise ValueError(f"{flag}: unknown domain {name!r} (domains: {', '.join(domains)})")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"{flag}: {item!r} is not name=number") from None
    missing = [d for d in domains if d not in out]
    if required and missing:
        raise ValueError(f"{flag}: missing domains {', '.join(missing)}")
    return out
